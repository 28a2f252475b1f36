"""`raytab init`: a commented starter config for the user's own table, without Ray.

    raytab init data/penguins.csv --label species          # writes penguins.yaml
    raytab train --config penguins.yaml

The table is inspected as `train` inspects it (app.data.sources, app.data.prepare's
`inspect_sources`), plus its first rows for the task that `task: auto` will pick and for
columns that look like ids. The text is validated as a `Config` before it is returned.

(Not named init_config.py: importing a submodule `app.init_config` would bind the package
attribute `app.init_config` to the module, hiding the API function `app.init_config`.)
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from app import extras
from app.config import Config, from_dict, parse_yaml
from app.data import preprocess, sources
from app.errors import UserError

HEAD_ROWS = 10_000  # rows read from the start of the first file: the task and the id-like columns
MIN_UNIQUE_ROWS = 20  # a text column is id-like when its values are unique over at least this many rows
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ID_NAME = re.compile(r"(?i)(^|[_\-. ])(id|uuid|guid)$|^(id|uuid|guid)[_\-. ]|^(index|unnamed: 0)$")
_CAMEL_ID = re.compile(r"[a-z0-9](Id|ID)$")
_COMMENT_AT = 32  # the column where comments after a value start


def default_name(data: str) -> str:
    """A run name from the data location: its file (or folder) name without the extension,
    sanitized to the name rule; `run` when nothing is left."""
    parts = [p for p in re.split(r"[/\\]", data.split("://", 1)[-1]) if p and not set(p) & set("*?[")]
    stem = parts[-1] if parts else ""
    for ext in (*sources.FORMATS, ".gz"):
        if stem.lower().endswith(ext) and len(stem) > len(ext):
            stem = stem[: -len(ext)]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._-")
    return stem or "run"


def starter_config(data: str, label: str, *, name: str | None = None, task: str = "auto",
                   config_path: str | None = None) -> str:
    """The YAML text of a commented config that trains on `data` to predict `label`, as it is.
    `config_path`: where it will be written, for the commands its comments show. Refuses
    (UserError) a missing or unreadable source, a label that is not a column, and a bad
    `name` or `task`."""
    if name is None:
        name = default_name(data)
    elif not NAME_RULE.fullmatch(name):
        raise UserError(f"--name: {name!r} must be letters, digits, '.', '_' or '-', starting with a letter or digit")
    if task not in ("auto", "classification", "regression"):
        raise UserError(f"--task: expected auto, classification or regression, got {task!r}")
    source = sources.resolve(data, "DATA")
    schema = sources.read_schema(source)
    if label not in schema.names:
        raise UserError(f"--label: column {label!r} is not in {data} (columns: {', '.join(schema.names)})")

    # Columns the data step cannot read (dates, lists, ...) go to data.drop, each found by the
    # data step's own rule (preprocess.column_kinds) on that column alone.
    unsupported: dict[str, str] = {}
    for field in schema:
        if field.name != label:
            try:
                preprocess.column_kinds(pa.schema([field, schema.field(label)]), _data(data, label))
            except UserError:
                unsupported[field.name] = str(field.type)
    inputs = _inspect(data, label, list(unsupported))
    head = _head(inputs)
    stats = _stats(head, inputs, label) if head is not None and head.num_rows else None
    rows = head.num_rows if stats else 0
    guessed_task = _task_comment(stats, rows, inputs) if task == "auto" else None
    id_like = _id_like(stats, rows, inputs)
    drop = [c for c in schema.names if c in unsupported or c in id_like]
    if drop and len(drop) == len(inputs.kinds) + len(unsupported):  # every feature: keep them, say so
        id_like = {}
        drop = list(unsupported)

    config = shlex.quote(config_path) if config_path else "FILE"
    text = _render(config=config, data=data, label=label, name=name, task=task, guessed_task=guessed_task, schema=schema,
                   inputs=inputs, unsupported=unsupported, id_like=id_like, drop=drop, source=source)
    check(text, f"the config written for {data}")
    return text


def check(text: str, where: str) -> Config:
    """The text validated as a Config (what `train --config` will load)."""
    return from_dict(parse_yaml(text), where)


# ---------------------------------------------------------------- inspecting


def _data(data: str, label: str, drop: list[str] | None = None):
    from app.config import DataConfig

    return DataConfig(train=data, label=label, drop=drop or [])


def _inspect(data: str, label: str, drop: list[str]) -> sources.Inputs:
    from app.data.prepare import inspect_sources

    cfg = from_dict({"name": "init", "data": {"train": data, "label": label, "drop": drop}}, "init")
    return inspect_sources(cfg)


def _head(inputs: sources.Inputs) -> pa.Table | None:
    """Up to HEAD_ROWS rows from the start of the first file, typed as training reads them;
    None when they cannot be read cheaply (the comments then say less)."""
    source, path = inputs.train, inputs.train.paths[0]
    try:
        if source.format == "parquet":
            with source.filesystem.open_input_file(path) as f:
                batch = next(pq.ParquetFile(f).iter_batches(batch_size=HEAD_ROWS), None)
            return None if batch is None else pa.Table.from_batches([batch])
        options = pacsv.ReadOptions(use_threads=False)
        with source.filesystem.open_input_stream(path) as f:
            reader = pacsv.open_csv(f, read_options=options,
                                    convert_options=sources.csv_convert_options(inputs.column_types))
            batch = reader.read_next_batch()
        return pa.Table.from_batches([batch]).slice(0, HEAD_ROWS)
    except (pa.ArrowException, OSError, StopIteration):
        return None


def _stats(head: pa.Table, inputs: sources.Inputs, label: str) -> dict[str, Any]:
    columns = [c for c in (*inputs.kinds, label) if c in head.column_names]
    return preprocess.partial_stats(head.select(columns), inputs.kinds, label)


def _task_comment(stats: dict[str, Any] | None, rows: int, inputs: sources.Inputs) -> str | None:
    """What `task: auto` will pick, by the data step's rule (preprocess.detect_task) on the
    first `rows` rows (`stats`: their summary), in words; None when they could not be read."""
    if stats is None:
        return None
    lab = stats["label"]
    task = preprocess.detect_task(lab, inputs.label_type)
    kind = _kind(inputs.label_type)
    seen = f"first {rows} rows"
    values = len(lab["values"])
    if task == "classification":
        return f"auto: classification ({kind} label, {values} classes in the {seen})"
    if kind == "number" and not lab["overflow"]:
        return (f"auto: regression (numeric label, {values} distinct values in the {seen}; "
                f"integers with at most {preprocess.AUTO_CLASSES} would be classes)")
    return f"auto: regression ({kind} label)"


def _kind(type_name: str) -> str:
    """number, text, boolean (sources.type_kind) of an Arrow type given by its name."""
    try:
        return sources.type_kind(pa.type_for_alias(type_name))
    except (ValueError, KeyError):
        return type_name


def _id_like(stats: dict[str, Any] | None, rows: int, inputs: sources.Inputs) -> dict[str, str]:
    """{column: why} for the features that look like ids: named like one, or text whose
    values are all different in the first rows (`stats`: their summary)."""
    found = {name: "named like an id" for name in inputs.kinds if _ID_NAME.search(name) or _CAMEL_ID.search(name)}
    if stats is not None and rows >= MIN_UNIQUE_ROWS:
        for name, s in stats["categorical"].items():
            text = sources.type_kind(inputs.column_types.get(name, pa.string())) == "text"
            if name not in found and text and s["present"] >= MIN_UNIQUE_ROWS and s["distinct"] == s["present"]:
                found[name] = f"text, a different value in each of the first {rows} rows"
    return found


# ---------------------------------------------------------------- the text


def _scalar(value: Any) -> str:
    """A value as YAML on one line (flow style), quoted where YAML needs it."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20, allow_unicode=True, sort_keys=False).strip() \
        .removesuffix("\n...").removesuffix("...").strip()


def _line(indent: int, key: str, value: Any, comment: str = "") -> str:
    return _commented(f"{' ' * indent}{key}: {_scalar(value)}", comment)


def _commented(text: str, comment: str) -> str:
    """`text`, then `comment` as a YAML comment, from column _COMMENT_AT where there is room."""
    if not comment:
        return text
    return f"{text.ljust(_COMMENT_AT) if len(text) < _COMMENT_AT else text + '  '}# {_one_line(comment)}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _render(*, config: str, data: str, label: str, name: str, task: str, guessed_task: str | None, schema: pa.Schema,
            inputs: sources.Inputs, unsupported: dict[str, str], id_like: dict[str, str], drop: list[str],
            source: sources.Source) -> str:
    # the values written are the config's own defaults (but num_workers: at most this machine's CPUs)
    m, t, s, r, p, tr = (Config.model_fields[k].default
                         for k in ("model", "train", "scaling", "run", "preprocess", "tracking"))
    split = _data(data, label).split
    relative = not (data.startswith("/") or "://" in data)
    workers = s.num_workers if isinstance(s.num_workers, int) else s.min_workers
    workers = max(1, min(workers, os.cpu_count() or 1))
    mlflow = tr.mlflow and not extras.missing("mlflow", "alembic")
    tensorboard = tr.tensorboard and not extras.missing("tensorboard")
    files = f"{len(source.paths)} files" if len(source.paths) > 1 else posixpath.basename(source.paths[0])

    out = [
        f"# raytab config for {_one_line(data)}, to predict {_one_line(label)!r}; written by `raytab init`.",
        f"# Train it as it is:  raytab train --config {config}   (override a key: --set train.epochs=5)",
        "# Keys left out take their defaults; every key and its default: docs/config.md.",
        _line(0, "name", name, "run name; also the folder under run.storage"),
        "",
        "data:",
        _line(2, "train", data, "CSV/Parquet file, folder, glob or URI"
              + ("; relative to the folder you run raytab in" if relative else "")),
        _line(2, "test", None, "optional held-out data; null: a test split is cut from train"),
        _line(2, "label", label, "the column to predict"),
        _line(2, "task", task, guessed_task or ("auto | classification | regression" if task == "auto"
                                                 else "as given to raytab init; auto would decide by the label")),
        f"  # Columns of {_one_line(files)} (kinds as training reads them):",
    ]
    for field in schema:
        if field.name == label:
            what = f"the label ({field.type})"
        elif field.name in unsupported:
            what = f"type {unsupported[field.name]}, which training cannot read: dropped"
        else:
            what = inputs.kinds.get(field.name, "?")
            if field.name in id_like:
                what += f"; looks like an id ({id_like[field.name]})" + (": dropped" if field.name in drop else "")
        out.append(f"  #   {_one_line(field.name)}: {what}")
    out += [
        _line(2, "features", None, "input columns; null: every column but the label and drop"),
        _line(2, "categorical", [], "numeric columns to treat as categories (codes, years)"),
        _line(2, "drop", drop, "columns to ignore (ids, leaks) when features is null"),
        _line(2, "split", split.model_dump(),
              "fractions held out for validation and test; the split's seed"),
        "",
        _commented("preprocess:", "fitted on the training split only"),
        _line(2, "missing_indicators", p.missing_indicators, "a 0/1 column per numeric column with gaps"),
        _line(2, "numeric_scaling", p.numeric_scaling, "quantile (robust to skew) | standard"),
        "",
        "model:",
        _line(2, "kind", m.kind, "tabm (an ensemble of MLPs trained as one) | mlp; see docs/models.md"),
        _line(2, "dropout", m.dropout, "dropout after each hidden layer, in [0, 1)"),
        _line(2, "k", m.k, "tabm: ensemble members (cost grows about linearly)"),
        _line(2, "d_block", m.d_block, "tabm: width of each hidden layer"),
        _line(2, "n_blocks", m.n_blocks, "tabm: number of hidden layers"),
        _line(2, "hidden", m.hidden, "mlp: widths of the hidden layers"),
        "",
        "train:",
        _line(2, "epochs", t.epochs, "most passes over the training split; auto: about 1M rows seen, 10 to 200"),
        _line(2, "batch_size", t.batch_size, "global batch over all workers; auto: 256, 512 or 1024 by rows"),
        _line(2, "lr", t.lr, "peak learning rate of AdamW"),
        _line(2, "weight_decay", t.weight_decay, "AdamW weight decay"),
        _line(2, "early_stopping_patience", t.early_stopping_patience,
              "stop after this many epochs without improvement; null: never"),
        _line(2, "seed", t.seed, "seeds the weights, dropout and data order"),
        "",
        "scaling:",
        _line(2, "num_workers", workers, "training workers (DDP ranks); [min, max]: elastic; more on a cluster"),
        _line(2, "use_gpu", s.use_gpu, "one GPU per worker (NCCL); false: CPU (gloo)"),
        _line(2, "cpus_per_worker", s.cpus_per_worker, "CPUs reserved per worker, also its torch threads"),
        "",
        "run:",
        _line(2, "storage", r.storage, "where runs live: a folder (relative to where you run raytab), or s3://, gs://"),
        _line(2, "max_failures", r.max_failures, "worker-group restarts from the latest checkpoint; -1: unlimited"),
        "  checkpoint:",
        _line(4, "keep", r.checkpoint.keep, "checkpoints kept: the best ones, plus the latest"),
        _line(4, "metric", r.checkpoint.metric, "ranks checkpoints, drives early stopping (accuracy, rmse, ...)"),
        "",
        _commented("tracking:", "" if mlflow and tensorboard else "off where not installed: pip install 'raytab[tracking]'"),
        _line(2, "mlflow", mlflow, "log the config and each epoch's metrics to MLflow (<run.storage>/mlflow.db)"),
        _line(2, "tensorboard", tensorboard, "TensorBoard event files in <run folder>/tensorboard"),
        "",
        "report:",
        _line(2, "baselines", "auto", "after train, also fit scikit-learn baselines on the same split "
              "(true | false | auto: up to report.baselines_auto_rows training rows)"),
        "",
        f"# A sweep for `raytab tune --config {config}`: uncomment, and list the keys to search.",
        "# tune:",
        _commented("#   num_samples: 8", "trials sampled from space"),
        _commented("#   max_concurrent_trials: 2", "trials at once, at most"),
        _commented("#   search: random", "random | grid | optuna"),
        _commented("#   scheduler: {name: asha, grace_period: 1, reduction_factor: 2}", "stops weak trials early"),
        _commented("#   space:", "dotted config key -> distribution"),
        "#     train.lr: {loguniform: [1.0e-4, 1.0e-2]}",
        "#     model.k: {choice: [8, 16, 32]}",
        "",
    ]
    return "\n".join(out)
