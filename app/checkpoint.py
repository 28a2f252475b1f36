"""Checkpoint format: one folder that is enough both to resume training and to predict.

    <checkpoint>/
      model.pt          model state_dict (tensors only: torch.load(weights_only=True))
      optimizer.pt      optimizer + LR scheduler state (tensors and numbers only)
      preprocess.json   fitted preprocessing and the input schema
      train_state.json  epoch, early-stopping state, history, resolved config
      manifest.json     format version, model config and dimensions, sha256 of every file

No file is unpickled as arbitrary objects. `manifest.json` is written last and names the
checksum of every other file, so a checkpoint cut short by a crash, wherever the copy
stopped, is refused at load time instead of loading wrongly.

The manifest of the run's best checkpoint may also hold its `calibration` (temperature and
decision threshold, app/calibration.py), added after training by `set_calibration`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app import storage
from app.config import ModelConfig
from app.data.transform import PreprocessState
from app.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = ("model.pt", "optimizer.pt", "preprocess.json", "train_state.json")  # a network's
# `model.kind: xgboost`: the booster in XGBoost's own binary format (UBJSON: no pickle) with
# every round trained so far; train_state.json says which round predicts (`best_round`).
BOOSTER_FILE = "model.ubj"
BOOSTER_FILES = (BOOSTER_FILE, "preprocess.json", "train_state.json")


# `model.kind: ensemble`: ensemble.json (the members' folders and weights) and, under
# members/<kind>/, a copy of each member's best checkpoint; the manifest lists every file.
ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FILES = (ENSEMBLE_FILE, "preprocess.json", "train_state.json")


def files_of(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The files of a checkpoint of this manifest's model kind (an ensemble's: those its
    manifest lists, which must include `ENSEMBLE_FILES`)."""
    model = manifest.get("model")
    kind = model.get("kind") if isinstance(model, dict) else None
    if kind == "ensemble":
        listed = manifest.get("sha256")
        names = tuple(listed) if isinstance(listed, dict) else ()
        return names if set(ENSEMBLE_FILES) <= set(names) else ENSEMBLE_FILES
    return BOOSTER_FILES if kind == "xgboost" else FILES


def write_checkpoint(directory: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, state: PreprocessState, model_cfg: ModelConfig,
                     train_state: dict[str, Any], after_first_file: Callable[[], None] | None = None) -> Path:
    """Write a complete checkpoint into `directory` (which should be new and empty)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "model.pt")
    if after_first_file is not None:
        after_first_file()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               directory / "optimizer.pt")
    return _finish(directory, state=state, model_cfg=model_cfg, train_state=train_state)


def write_booster_checkpoint(directory: str | Path, *, booster: Any, state: PreprocessState, model_cfg: ModelConfig,
                             train_state: dict[str, Any], after_first_file: Callable[[], None] | None = None) -> Path:
    """`write_checkpoint` of an xgboost Booster (`BOOSTER_FILES`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / BOOSTER_FILE).write_bytes(bytes(booster.save_raw(raw_format="ubj")))
    if after_first_file is not None:
        after_first_file()
    return _finish(directory, state=state, model_cfg=model_cfg, train_state=train_state)


def write_ensemble_checkpoint(directory: str | Path, *, members: dict[str, str | Path], weights: dict[str, float],
                              state: PreprocessState, model_cfg: ModelConfig, train_state: dict[str, Any]) -> Path:
    """`write_checkpoint` of an ensemble: each member's checkpoint folder (local, verified)
    copied under members/<kind>/ without its own calibration (the ensemble is calibrated as
    one model), and the weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = []
    for kind, source in members.items():
        target = directory / "members" / kind
        shutil.copytree(source, target)
        manifest = json.loads((target / MANIFEST).read_text())
        manifest.pop("calibration", None)
        (target / MANIFEST).write_text(json.dumps(manifest, indent=1))
        spec.append({"kind": kind, "folder": f"members/{kind}", "weight": weights[kind]})
    (directory / ENSEMBLE_FILE).write_text(json.dumps({"members": spec}, indent=1))
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return _finish(directory, state=state, model_cfg=model_cfg, train_state=train_state,
                   files=[*files, "preprocess.json", "train_state.json"])


def _finish(directory: Path, *, state: PreprocessState, model_cfg: ModelConfig, train_state: dict[str, Any],
            files: list[str] | None = None) -> Path:
    """The files every kind writes after its model's, then the manifest, last."""
    (directory / "preprocess.json").write_text(state.to_json())
    (directory / "train_state.json").write_text(json.dumps(train_state, indent=1))
    manifest = {
        "format": FORMAT_VERSION,
        "epoch": train_state["epoch"],
        "model": model_cfg.model_dump(mode="json"),
        "numeric_width": state.numeric_width,
        "cardinalities": state.cardinalities,
        "output_dim": state.output_dim,
    }
    manifest["sha256"] = {name: _sha256(directory / name) for name in (files or files_of(manifest))}
    _atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1))
    return directory


def model_config(manifest: dict[str, Any]) -> ModelConfig:
    """The model config a checkpoint was trained with (one written before model.kind
    existed holds an mlp)."""
    return ModelConfig.model_validate({"kind": "mlp"} | manifest["model"])


def upload(local_dir: str | Path, filesystem: storage.FileSystem, destination: str,
           after_first_file: Callable[[], None] | None = None) -> None:
    """Copy a checkpoint folder to storage with its manifest last.

    Whatever point a crash stops the copy at, the folder in storage has no manifest
    (or a manifest whose checksums do not match), so it is never loaded.
    """
    local_dir = Path(local_dir)
    filesystem.create_dir(destination, recursive=True)
    # A manifest left by an earlier attempt at this same epoch goes first.
    storage.remove_path(filesystem, f"{destination}/{MANIFEST}")
    files = files_of(json.loads((local_dir / MANIFEST).read_text()))
    for parent in sorted({name.rsplit("/", 1)[0] for name in files if "/" in name}):  # an ensemble's members/<kind>
        filesystem.create_dir(f"{destination}/{parent}", recursive=True)
    for i, name in enumerate((*files, MANIFEST)):
        storage.upload_file(local_dir / name, filesystem, f"{destination}/{name}")
        if i == 0 and after_first_file is not None:
            after_first_file()


def verify(directory: str | Path, label: str | None = None) -> dict[str, Any]:
    """The manifest, after checking that every file is there and intact."""
    directory = Path(directory)
    label = label or str(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise UserError(f"checkpoint {label}: no {MANIFEST}; not a checkpoint, or an incomplete one") from None
    except (OSError, ValueError) as e:
        raise UserError(f"checkpoint {label}: unreadable {MANIFEST} ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise UserError(f"checkpoint {label}: unsupported format in {MANIFEST}")
    missing = [k for k in ("epoch", "model", "numeric_width", "cardinalities", "output_dim", "sha256")
               if k not in manifest]
    if missing or not isinstance(manifest["sha256"], dict) or set(manifest["sha256"]) != set(files_of(manifest)):
        raise UserError(f"checkpoint {label}: {MANIFEST} is incomplete ({', '.join(missing) or 'file list'})")
    for name, digest in manifest["sha256"].items():
        path = directory / name
        if not path.exists():
            raise UserError(f"checkpoint {label}: {name} is missing")
        if _sha256(path) != digest:
            raise UserError(f"checkpoint {label}: {name} is corrupt (checksum mismatch)")
    return manifest


def set_calibration(uri: str, calibration: dict[str, Any] | None) -> None:
    """Record how the checkpoint at `uri` turns its outputs into probabilities and
    predictions (None: as the network gives them), in its manifest.

    The manifest is the only file rewritten, in one atomic replace (a temporary file
    renamed; an object store publishes an upload whole): a reader, or a crash, sees the
    checkpoint either as it was or calibrated, never a mix of files from both. Keeping it
    out of a file of its own also leaves `FILES` and their checksums as training wrote them."""
    location = storage.join(uri, MANIFEST)
    manifest = storage.read_json(location)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise UserError(f"checkpoint {uri}: no readable {MANIFEST}; not a checkpoint, or an incomplete one")
    if manifest.get("calibration") == calibration:
        return
    manifest.pop("calibration", None)
    storage.write_json(location, manifest | ({"calibration": calibration} if calibration else {}))


def calibration(manifest: dict[str, Any], label: str) -> dict[str, Any] | None:
    """The checkpoint's calibration (`set_calibration`), checked; None for one without (older
    checkpoints, or calibration off)."""
    cal = manifest.get("calibration")
    if cal is None:
        return None
    if not (isinstance(cal, dict) and _number_in(cal.get("temperature"), 1e-6, 1e6)
            and (cal.get("threshold") is None or _number_in(cal["threshold"], 0.0, 1.0))):
        raise UserError(f"checkpoint {label}: unreadable calibration in {MANIFEST} ({cal!r})")
    return cal


def load_preprocess_state(directory: str | Path) -> PreprocessState:
    return PreprocessState.from_json((Path(directory) / "preprocess.json").read_text())


def load_train_state(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "train_state.json").read_text())


def load_model_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(directory) / "model.pt", map_location="cpu", weights_only=True)


def load_optimizer_state(directory: str | Path) -> dict[str, Any]:
    return torch.load(Path(directory) / "optimizer.pt", map_location="cpu", weights_only=True)


@dataclass
class Intact:
    """A checkpoint that passed `verify`, with what resuming from it needs."""

    uri: str
    manifest: dict[str, Any]
    train_state: dict[str, Any]
    state: PreprocessState


def newest_intact(uris: Iterable[str]) -> tuple[Intact | None, list[str]]:
    """The first checkpoint of `uris` (newest first) that is complete and readable, and why
    each one before it was skipped (one message per checkpoint, naming it).

    A crash can leave the newest checkpoint cut short, and a disk can damage any of them;
    an older intact one then loses less work than starting over."""
    skipped = []
    for uri in uris:
        try:
            with local_copy(uri) as directory:
                manifest = verify(directory, uri)
                return Intact(uri, manifest, load_train_state(directory), load_preprocess_state(directory)), skipped
        except UserError as e:
            skipped.append(str(e))
        except (ValueError, KeyError, OSError) as e:  # checksums fine, content not: written by a broken build
            skipped.append(f"checkpoint {uri}: unreadable ({e})")
    return None, skipped


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local folder holding the checkpoint at `uri` (a path, or a pyarrow URI to download)."""
    if "://" not in uri:
        path = Path(uri).expanduser()
        if not path.is_dir():
            raise UserError(f"checkpoint {uri}: not a folder")
        yield path
        return
    if not storage.is_dir(uri):
        raise UserError(f"checkpoint {uri}: not found")
    tmp = tempfile.mkdtemp(prefix="app-ckpt-")
    try:
        storage.download(uri, tmp)
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _number_in(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
