"""`submit`'s job: a command line that the head's shell splits back into exactly the
arguments given, and the runtime env that scripts/submit.sh always gave."""

from __future__ import annotations

import re
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from app.submit import EXCLUDES, ROOT, entrypoint, runtime_env

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


def test_runtime_env_uploads_the_project_and_pins_its_dependencies():
    assert runtime_env(pip=False) == {"working_dir": str(ROOT), "excludes": EXCLUDES}
    env = runtime_env(pip=True)
    packages = env["pip"]["packages"]
    assert not any(re.match(r"ray\b", p) for p in packages)  # the cluster's own Ray runs the job
    pinned = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    assert f"torch=={pinned['torch']}" in packages and f"pandas=={pinned['pandas']}" in packages
