"""Where an interrupted run continues, and whether it may.

    python -m app train --config configs/quickstart.yaml   # again, after a crash: resumes
    python -m app train --config configs/quickstart.yaml --fresh   # starts over

A run resumes from its newest intact checkpoint (`choose_checkpoint`), with the
preprocessing fitted there, never refitted, and only under a config whose data, preprocess
and model sections are the checkpoint's (`check_same_setup`, `check_same_inputs`). A sweep
(app/tuning.py) checks its trials and its own saved setup the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app import runs, storage
from app.config import Config, flatten
from app.data.sources import Inputs
from app.data.transform import PreprocessState
from app.errors import UserError
from app.redact import redact_tree

if TYPE_CHECKING:
    from app.checkpoint import Intact

log = logging.getLogger(__name__)

RESUME_HINT = "; pass --fresh to start over"


@dataclass
class ResumePoint:
    checkpoint: str
    epoch: int
    state: PreprocessState  # never refitted on resume
    registered: bool = True  # Ray Train's record names it as the latest; else the loop config must

    @property
    def resume_from(self) -> str | None:
        """For `build_trainer`: the checkpoint when Ray Train would not hand it to the workers."""
        return None if self.registered else self.checkpoint


def resume_point(cfg: Config, out_dir: str, inputs: Inputs) -> ResumePoint | None:
    """Where an interrupted run continues: its newest intact checkpoint (`choose_checkpoint`),
    made by this config."""
    chosen = choose_checkpoint(out_dir)
    if chosen is None:
        return None
    found, registered = chosen
    what = f"checkpoint {found.uri}"
    try:
        saved = saved_config(found.train_state)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{what}: unreadable ({e}){RESUME_HINT}") from None
    check_same_setup(saved, cfg, what)
    check_same_inputs(inputs, found.state, what)
    return ResumePoint(found.uri, found.manifest["epoch"], found.state, registered)


def latest_checkpoint(out_dir: str) -> str | None:
    """The checkpoint Ray Train registered last in this run, if any."""
    snapshot = storage.read_json(storage.join(out_dir, runs.RAY_CHECKPOINTS)) or {}
    name = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    return storage.join(out_dir, name) if name else None


def read_snapshot(out_dir: str) -> dict[str, Any] | None:
    """Ray Train's record of the run's checkpoints; None when there is none.

    Ray Train rewrites that record in place; on a local disk, a driver killed in the middle
    leaves it empty or cut short, and Ray could not resume from it. Such a record is moved
    aside (`.cut-short-<time>`, kept) and None returned: the checkpoint folders are then all
    there is to resume from."""
    path = storage.join(out_dir, runs.RAY_CHECKPOINTS)
    try:
        snapshot = storage.read_json(path)
        if snapshot is None or isinstance(snapshot, dict):
            return snapshot
    except UserError:
        pass  # not JSON: cut short
    fs, fs_path = storage.filesystem(path)
    aside = f"{fs_path}.cut-short-{int(time.time())}"
    fs.move(fs_path, aside)
    log.warning(f"{path} was cut short (the driver died while Ray Train wrote it); set aside as {aside}, "
                f"resuming from the newest intact checkpoint folder")
    return None


def registered_newest_first(snapshot: dict[str, Any]) -> list[str]:
    """The folder names of the checkpoints Ray Train registered: its latest, then the rest by epoch."""
    latest = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    results = sorted(snapshot.get("checkpoint_results") or [], key=lambda r: r.get("metrics", {}).get("epoch", 0),
                     reverse=True)
    names = [latest] if latest else []
    return names + [r["checkpoint_dir_name"] for r in results if r["checkpoint_dir_name"] not in names]


def roll_back(snapshot: dict[str, Any], *, dropped: set[str], latest: str) -> dict[str, Any]:
    """Ray Train's record of the run's checkpoints without the `dropped` ones and with `latest`
    as the latest: Ray Train hands its latest checkpoint to the workers, so this is how a run
    resumes from an older one. Report indices only grow, so the ones kept stay valid."""
    def kept(entry: dict[str, Any]) -> bool:
        return entry["checkpoint_dir_name"] not in dropped

    out = dict(snapshot)
    pairs = [p for p in zip(snapshot["checkpoint_results"], snapshot["checkpoint_report_indices"]) if kept(p[0])]
    out["checkpoint_results"] = [result for result, _ in pairs]
    out["checkpoint_report_indices"] = [index for _, index in pairs]
    pending = [p for p in zip(snapshot.get("pending_training_results", []), snapshot.get("pending_validation_specs", []))
               if kept(p[0])]
    if "pending_training_results" in snapshot:
        out["pending_training_results"] = [result for result, _ in pending]
        out["pending_validation_specs"] = [spec for _, spec in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        if key in snapshot:
            out[key] = [name for name in snapshot[key] if name not in dropped]
    out["latest_checkpoint_result"] = next(r for r in out["checkpoint_results"] if r["checkpoint_dir_name"] == latest)
    return out


def choose_checkpoint(out_dir: str) -> tuple[Intact, bool] | None:
    """The newest intact checkpoint of an interrupted run, and whether Ray Train's record
    names it as its latest; None: nothing to resume from.

    Candidates, newest first: the checkpoints Ray Train registered when its record is
    readable, otherwise the checkpoint folders. One warning names each candidate skipped
    (corrupt, incomplete, missing) and why; skipped folders stay as they are, and a redone
    epoch writes its checkpoint over them. When the record's latest is skipped, the record
    is rolled back to the chosen one (the original kept beside it as `.rolled-back-<time>`).
    Registered checkpoints none of which is intact are a UserError: starting over silently
    would throw the run's progress away."""
    from app.checkpoint import newest_intact  # torch: imported once a run needs it

    snapshot = read_snapshot(out_dir)
    if snapshot is None:
        names = sorted((e.name for e in storage.listdir(out_dir)
                        if e.is_dir and e.name.startswith(runs.CHECKPOINT_PREFIX)), reverse=True)
    else:
        names = registered_newest_first(snapshot)
    found, skipped = newest_intact(storage.join(out_dir, name) for name in names)
    if found is None and skipped and snapshot is not None:
        raise UserError(f"{out_dir}: no intact checkpoint to resume from ({'; '.join(skipped)}){RESUME_HINT}")
    if skipped:
        outcome = f"resuming from {found.uri}" if found else "starting over"
        log.warning(f"{len(skipped)} checkpoint(s) skipped, {outcome}:\n  " + "\n  ".join(skipped))
    if found is None:
        return None
    if snapshot is not None and skipped:
        path = storage.join(out_dir, runs.RAY_CHECKPOINTS)
        storage.write_json(f"{path}.rolled-back-{int(time.time())}", snapshot)
        storage.write_json(path, roll_back(snapshot, dropped=set(names[:len(skipped)]),
                                           latest=storage.name(found.uri)))
    return found, snapshot is not None


def saved_config(train_state: dict[str, Any]) -> Config:
    """The config a checkpoint was made with."""
    tree = train_state["config"]
    # A run from before model kinds and quantile scaling: an mlp on standard scaling.
    tree["model"] = {"kind": "mlp"} | tree.get("model", {})
    tree["preprocess"] = {"numeric_scaling": "standard"} | tree.get("preprocess", {})
    return Config.model_validate(tree)


def check_same_setup(saved: Config, cfg: Config, what: str, *, ignore: frozenset[str] = frozenset()) -> None:
    """Refuse to continue `what` (made with `saved`) under `cfg` if its data, preprocess or model
    section differs: the fitted preprocessing and the weights would not fit. The `train`,
    `scaling` and `run` sections may change between attempts (more epochs, other workers).
    `ignore`: keys that do not matter here (a sweep's searched keys)."""
    for section in ("data", "preprocess", "model"):
        # Checkpoints hold the config with URI credentials redacted (app/redact.py): compared so.
        before = flatten(redact_tree(getattr(saved, section).model_dump(mode="json")), section)
        now = flatten(redact_tree(getattr(cfg, section).model_dump(mode="json")), section)
        for key in sorted((set(before) | set(now)) - ignore):
            if before.get(key) != now.get(key):
                raise UserError(f"{what} does not fit this run: {key} is {before.get(key)!r} there "
                                f"and {now.get(key)!r} here{RESUME_HINT}")


def check_same_inputs(inputs: Inputs, state: PreprocessState, what: str) -> None:
    """Refuse fitted preprocessing made for other input columns or types."""
    if inputs.input_types != state.input_types:
        changed = sorted(set(inputs.input_types.items()) ^ set(state.input_types.items()))
        raise UserError(f"{what} does not fit this run: the input columns differ "
                        f"({', '.join(f'{n}: {t}' for n, t in changed)}){RESUME_HINT}")
