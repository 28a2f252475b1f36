"""`submit`'s job: a command line that the head's shell splits back into exactly the
arguments given, and a runtime env made from the installed package, not from a checkout."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import version
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import app
from app.submit import EXCLUDES, entrypoint, runtime_env

# Anything a shell would act on, and plain text around it.
ARGS = st.lists(st.one_of(
    st.sampled_from(["; touch x", "$(touch x)", "`id`", "a && b", "'", '"', "\\", "$HOME", "x|y", "*",
                     "--set", "name=it's", "", " ", "\n", "#c", "~"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)), max_size=6)


@settings(max_examples=60, deadline=None)
@given(args=ARGS)
def test_the_shell_gets_back_exactly_the_arguments_and_runs_nothing(args, tmp_path_factory):
    # Ray runs the entrypoint with /bin/sh; `set --` makes the shell parse it as it would, and
    # printf shows what the command would have received (nothing else runs).
    line = entrypoint("train", args)
    shown = subprocess.run(["/bin/sh", "-c", f"set -- {line}; printf '%s\\0' \"$@\""], capture_output=True,
                           check=True, cwd=tmp_path_factory.mktemp("sh"))
    assert shown.stdout.decode().split("\0")[:-1] == ["python", "-m", "app", "train", *args]


def test_runtime_env_ships_the_installed_package_and_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkout here: nothing of one is read
    package = str(Path(app.__file__).resolve().parent)
    assert runtime_env(pip=False) == {"working_dir": str(tmp_path), "py_modules": [package], "excludes": EXCLUDES}
    assert "/app" in EXCLUDES  # the package comes from py_modules, never from the working dir


def test_runtime_env_pins_the_distributions_dependencies_to_the_installed_versions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packages = runtime_env(pip=True)["pip"]["packages"]
    assert not any(re.match(r"(ray|raytab)\b", p) for p in packages)  # the cluster's own Ray runs the job
    for name in ("torch", "pandas", "scikit-learn", "tabm"):  # core dependencies, at this environment's versions
        assert f"{name}=={version(name).split('+')[0]}" in packages  # (torch 2.13.0+cpu: any 2.13.0 build does)
    # This venv has every extra (scripts/setup.sh): their packages go along, and the test tools do not.
    assert f"mlflow-skinny=={version('mlflow-skinny')}" in packages and f"onnx=={version('onnx')}" in packages
    assert not any(p.startswith(("pytest", "hypothesis", "moto")) for p in packages)
    assert all("==" in p for p in packages) and len(packages) == len({p.split("==")[0] for p in packages})
    # ... and setup.sh installs with constraints.txt: the versions the test suite runs with.
    repo = Path(__file__).resolve().parents[2]
    pinned = dict(line.split("==") for line in (repo / "constraints.txt").read_text().split() if "==" in line)
    assert f"torch=={pinned['torch']}" in packages and f"pandas=={pinned['pandas']}" in packages


def test_an_extra_that_is_not_installed_stays_out_of_the_job(tmp_path, monkeypatch):
    import importlib.metadata

    from app.submit import pinned_requirements

    real = importlib.metadata.version

    def without_onnxscript(name):
        if name.lower() == "onnxscript":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", without_onnxscript)
    packages = pinned_requirements()
    assert not any(p.startswith(("onnx", "onnxruntime")) for p in packages)  # the export extra, partly missing
    assert any(p.startswith("mlflow-skinny==") for p in packages)
