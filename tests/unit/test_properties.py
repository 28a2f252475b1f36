"""Property tests of bad input: whatever the config or the data holds, the app decides
without a traceback.

- Config: random `--set KEY=VALUE` overrides and random YAML through `app.cli.main` in this
  process. Every decision is exit 0 (the config is valid: the run of that name has already
  finished, so nothing starts) or exit 2 with one `error:` line; nothing is written either way.
- Data: random small CSV and Parquet tables with odd values (infinities, NaN, empty strings,
  huge numbers, unicode, repeated column names, numbers stored as text, parts that disagree)
  through the data step's functions that need no Ray: the preflight checks, the stats
  pass, fitting and transforming. Each table is refused with a UserError naming a column
  or the file, or accepted and turned into finite model inputs.

No Ray is started. PROPERTY_EXAMPLES sets the examples per property (more for a deeper search).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.cli import main
from app.config import Config, flatten, from_dict
from app.data import preprocess as pp
from app.data.prepare import add_split_column, inspect_sources, partial_stats_batch, transform_batch
from app.data.sources import read_table
from app.data.split import SPLIT_COLUMN, TRAIN
from app.data.transform import PreprocessState
from app.errors import UserError
from tests.conftest import penguins_tree

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "60"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


# ---------------------------------------------------------------- config

# Text without "/" so that no generated path reaches outside the empty working folder.
WORDS = st.text(st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)), max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), WORDS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["auto", "mlp", "tabm", "quantile", "random", "asha", "valid_loss", "accuracy", "min", "max",
                     "PACK", 0, 1, 2, -1, 0.5, 1e-3, 1e300]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(WORDS, inner, max_size=3), max_leaves=6)
# Keys that could point the run at other data or another run folder stay fixed: a valid
# config is then always the finished run below, and never starts Ray.
PINNED = ("name", "data.train", "data.test", "run.storage")
DEFAULTS = {k: v for k, v in flatten(Config(name="x", data={"train": "t", "label": "y"}).to_dict()).items()
            if not k.startswith(PINNED)}
KNOWN_KEYS = sorted(DEFAULTS)
SECTIONS = sorted({k.split(".")[0] for k in KNOWN_KEYS})
KEYS = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.sampled_from(SECTIONS),
    st.builds(lambda s, w: f"{s}.{w}", st.sampled_from(SECTIONS), st.from_regex(r"[a-z_]{1,8}", fullmatch=True)),
    st.text(max_size=10).filter(lambda k: not k.startswith(PINNED)),
)


def yaml_text(value) -> str:
    """A value as --set takes it: flow-style YAML on one line."""
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6).strip().removesuffix(
        "\n...").strip()


OVERRIDES = st.lists(st.one_of(
    st.tuples(KEYS, st.one_of(VALUES.map(yaml_text), st.text(max_size=12))),
    st.sampled_from(KNOWN_KEYS).map(lambda k: (k, yaml_text(DEFAULTS[k]))),  # valid, unless another is not
), max_size=3)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder holding a finished run and an empty working folder; the base config points
    at data that does not exist, so a valid config that is not that run stops at the data."""
    root = tmp_path_factory.mktemp("props")
    run = root / "runs" / "quickstart"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (root / "cwd").mkdir()
    base = penguins_tree(root, data__train=str(root / "absent.csv"))
    return root, base


def decide(root: Path, args: list[str]) -> tuple[int, str, str]:
    """`python -m app ARGS` in this process, from the empty working folder: (exit code,
    stdout, stderr). An exception other than a UserError propagates: that is a traceback."""
    before = files_under(root)
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(root / "cwd")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
    finally:
        os.chdir(cwd)
    assert not ray_started(), "a config check started Ray"
    assert files_under(root) == before, "a config check wrote or removed files"
    stdout, stderr = out.getvalue(), err.getvalue()
    assert code in (0, 2), stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if code == 2:
        assert len(errors) == 1, stderr
    else:
        assert not errors and "already finished" in stdout, (stdout, stderr)
    return code, stdout, errors[0] if errors else ""


@PROPERTY
@given(OVERRIDES)
def test_random_overrides_are_decided_without_a_traceback(workspace, overrides):
    root, base = workspace
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(base))
    args = ["train", "--config", str(path)] + [f"--set={key}={value}" for key, value in overrides]
    code, _, _ = decide(root, args)
    event(f"exit {code}")
    for i, (key, _) in enumerate(overrides):
        unknown = key.startswith(tuple(f"{s}." for s in SECTIONS)) and key not in KNOWN_KEYS \
            and not any(key.startswith(k + ".") for k in KNOWN_KEYS)
        replaced = any(key.startswith(later + ".") for later, _ in overrides[i + 1:])  # its section, set anew
        if unknown and not replaced:
            assert code == 2, f"{key} is not a config key"


def mutations():
    """(dotted path into the config tree, new value or None to delete it)."""
    new_keys = st.builds(lambda s, w: f"{s}.{w}", st.sampled_from(SECTIONS), WORDS.filter(lambda w: "." not in w))
    paths = st.one_of(st.sampled_from(KNOWN_KEYS + SECTIONS), new_keys)
    return st.lists(st.tuples(paths, st.one_of(st.none(), VALUES)), min_size=1, max_size=3)


def mutate(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value


@PROPERTY
@given(st.one_of(mutations().map(lambda m: ("mutate", m)), st.text(max_size=60).map(lambda t: ("text", t))))
def test_random_config_files_are_decided_without_a_traceback(workspace, case):
    root, base = workspace
    kind, payload = case
    path = root / "config.yaml"
    if kind == "text":
        path.write_text(payload, encoding="utf-8", errors="surrogatepass")
    else:
        tree = json.loads(json.dumps(base))
        for key, value in payload:
            mutate(tree, key, value)
        path.write_text(yaml.safe_dump(tree, allow_unicode=True))
    event(f"exit {decide(root, ['train', '--config', str(path)])[0]}")


def test_the_base_config_is_the_finished_run(workspace):
    """The properties above can tell valid from invalid: the base config exits 0 unchanged."""
    root, base = workspace
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(base))
    assert decide(root, ["train", "--config", str(path)])[0] == 0
    code, _, error = decide(root, ["train", "--config", str(path), "--set=train.epochs=-1"])
    assert code == 2 and "train.epochs" in error


# ---------------------------------------------------------------- data

NAMES = ["a", "b", "c", "ß-straße", "数", " "]
ODD_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -1e308, 1e-308, 0.0, 2.0**53]))
ODD_TEXT = st.one_of(st.sampled_from(["", " ", "NA", "nan", "inf", "-inf", "1e400", "7", "3.5", "Ø", "\u200b", "a,b",
                                      '"', "é" * 40]), st.text(max_size=6))
CELL = st.one_of(st.none(), ODD_FLOATS, st.integers(-2**63, 2**63 - 1), ODD_TEXT, st.booleans())
ARROW_TYPES = {"float": (pa.float64(), ODD_FLOATS), "int": (pa.int64(), st.integers(-2**63, 2**63 - 1)),
               "text": (pa.string(), ODD_TEXT), "bool": (pa.bool_(), st.booleans())}


@st.composite
def tables(draw):
    """(file format, parts): each part a list of (column name, Arrow type, values); every
    table has a label `y`, and a Parquet part may store a column with another type."""
    fmt = draw(st.sampled_from(["csv", "parquet"]))
    header = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True)) + ["y"]
    odd = draw(st.integers(0, 9))  # now and then a repeated name, or one the data step uses itself
    if odd == 0:
        header.append(draw(st.sampled_from(header)))
    elif odd == 1:
        header.insert(0, "__split__")
    parts = []
    kinds = {i: draw(st.sampled_from(sorted(ARROW_TYPES))) for i in range(len(header))}
    for _ in range(draw(st.integers(1, 2))):
        rows = draw(st.integers(1, 25))
        if fmt == "parquet" and draw(st.integers(0, 4)) == 0:  # a part that stores a column differently
            kinds = {**kinds, draw(st.integers(0, len(header) - 1)): draw(st.sampled_from(sorted(ARROW_TYPES)))}
        columns = []
        for i in range(len(header)):
            cells = st.one_of(st.none(), ARROW_TYPES[kinds[i]][1]) if fmt == "parquet" else CELL
            if header[i] == "y":  # a label with few values, so that classification sometimes fits
                cells = st.one_of(cells, st.sampled_from([0, 1, 2] if kinds[i] != "text" else ["p", "q"]))
                if fmt == "parquet" and kinds[i] == "bool":
                    cells = st.one_of(st.none(), st.booleans())
                elif fmt == "parquet" and kinds[i] == "float":
                    cells = st.one_of(cells, st.sampled_from([0.5, 1.5]))
            columns.append(draw(st.lists(cells, min_size=rows, max_size=rows)))
        parts.append([(header[i], ARROW_TYPES[kinds[i]][0], col) for i, col in enumerate(columns)])
    return fmt, parts


def write_parts(folder: Path, fmt: str, parts) -> None:
    for n, part in enumerate(parts):
        path = folder / f"part-{n}.{fmt}"
        if fmt == "parquet":
            arrays = [pa.array([_as(v, t) for v in values], type=t) for _, t, values in part]
            pq.write_table(pa.Table.from_arrays(arrays, names=[name for name, _, _ in part]), path)
        else:
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow([name for name, _, _ in part])
                writer.writerows(zip(*[["" if v is None else _text(v) for v in values] for _, _, values in part]))


def _as(value, dtype: pa.DataType):
    return None if value is None or (pa.types.is_integer(dtype) and not isinstance(value, int)) else value


def _text(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def data_step(cfg) -> None:
    """What `prepare` does on Ray, here in one process and with one batch per file, as Ray
    Data reads them: preflight, split, stats, fit, transform; refusals are UserErrors."""
    inputs = inspect_sources(cfg)
    d = cfg.data
    batches = [add_split_column(read_table(replace(inputs.train, paths=(path,)), inputs.column_types).to_pandas(),
                                d.split.valid, d.split.test, d.split.seed) for path in inputs.train.paths]
    merger, sample = pp.StatsMerger(d.max_categories), pp.SampleMerger(cfg.preprocess.sample_rows)
    for batch in batches:
        out = partial_stats_batch(batch, inputs.kinds, d.label, train_mask=(batch[SPLIT_COLUMN] == TRAIN).to_numpy(),
                                  sample_rows=cfg.preprocess.sample_rows, max_categories=d.max_categories)
        merger.add(json.loads(out["stats"][0]))
        sample.add(np.frombuffer(out["sample"][0]).reshape(-1, out["sample_columns"][0]))
    state, _ = pp.fit_preprocessor(merger.result(), data=d, preprocess=cfg.preprocess, inputs=inputs)
    pp.fit_numeric_scaling(state, sample.result([n for n, k in inputs.kinds.items() if k == "numeric"]),
                           cfg.preprocess.numeric_scaling, cfg.preprocess.embedding_bins)
    state = PreprocessState.from_json(state.to_json())
    for batch in batches:
        ready = transform_batch(batch, state.to_json(), None)
        assert np.isfinite(ready["x_num"]).all(), ready["x_num"]
        assert (ready["x_cat"] >= 0).all() and (ready["x_cat"] < np.array(state.cardinalities)).all()
        if state.task == "regression":
            assert np.isfinite(ready["y"]).all()
        else:
            assert ((ready["y"] >= 0) & (ready["y"] < len(state.classes))).all()


# Refusals of the table as a whole, which name the source but no column
TABLE_REFUSALS = ("no feature columns left", "no rows with a label to train on", "no usable feature columns")


@PROPERTY
@given(tables(), st.sampled_from(["quantile", "standard"]), st.integers(1, 3))
def test_odd_tables_are_refused_naming_a_column_or_accepted(tmp_path_factory, case, scaling, max_categories):
    fmt, parts = case
    folder = tmp_path_factory.mktemp("table")
    write_parts(folder, fmt, parts)
    cfg = from_dict(penguins_tree(folder, data__train=str(folder), data__label="y",
                                  data__max_categories=max_categories,
                                  preprocess={"numeric_scaling": scaling, "sample_rows": 100}), "test")
    try:
        data_step(cfg)
        event("accepted")
    except UserError as e:
        message = str(e)
        event("refused: " + re.sub(r"'[^']*'|\([^)]*\)|/\S*|\d+", "_", message)[:80])
        names = {name for part in parts for name, _, _ in part}
        assert any(repr(name) in message for name in names) or "part-" in message \
            or any(refusal in message for refusal in TABLE_REFUSALS), message
