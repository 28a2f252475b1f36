"""`export`: a checkpoint as a folder that predicts without Ray, PyTorch or this package.

    python -m app export --checkpoint runs/quickstart/checkpoint_epoch_0012 --output model/
    python model/predict.py new.csv predictions.csv        # needs onnxruntime, numpy, pandas

The folder holds model.onnx and model_torchscript.pt (the same network, prepared arrays ->
probabilities or the prediction in the label's units), preprocess.json (the fitted state), preprocess.py (a copy of the code
that prepares rows, app/data/transform.py), predict.py (a runner and a `Model` class),
schema.json, calibration.json for a calibrated checkpoint (its temperature is inside
the models already; predict.py reads the decision threshold from it) and a README. `--output` is claimed while the command runs, as `predict` claims
its output (`storage.claimed`): a second export to the same folder is refused, and a folder
that appears or changes there meanwhile is not replaced (the new one stays under its
staging name, which the error names).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import torch

from app import storage
from app.errors import UserError
from app.extras import require
from app.predictor import Predictor
from app.redact import redact

MODEL_FILE = "model.onnx"
BOOSTER_FILE = "model.ubj"  # model.kind: xgboost (the name app/exported/predict.py looks for)
TORCHSCRIPT_FILE = "model_torchscript.pt"
CALIBRATION_FILE = "calibration.json"  # the name app/exported/predict.py reads


class _Exported(torch.nn.Module):
    """The network plus its last step: softmax of the logits divided by the checkpoint's
    temperature (as `Predictor.forward`), or undoing the label's standardisation."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.model, state = predictor.model, predictor.state
        self.classification = state.task == "classification"
        self.mean, self.std = float(state.target_mean), float(state.target_std)
        self.temperature = predictor.temperature

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        out = self.model(x_num, x_cat)
        if not self.classification:
            return out * self.std + self.mean
        return torch.softmax(out / self.temperature if self.temperature != 1.0 else out, dim=1)


def export(checkpoint: str, output: str, overwrite: bool = False) -> Path:
    predictor = Predictor.from_checkpoint(checkpoint)
    from app.ensemble import EnsembleModule

    if isinstance(predictor.model, EnsembleModule):
        raise UserError(f"--checkpoint {checkpoint}: an ensemble cannot be exported yet; export one of its "
                        f"members instead (the checkpoints under its members/ folder)")
    if not is_trees(predictor):
        require("export", "onnx", "onnxscript")  # the exporter; onnxruntime runs the folder it writes
    out = Path(output).expanduser().resolve()
    if "://" in output:
        raise UserError(f"--output {output}: export writes a local folder; copy it to object storage after")
    check_output(out, output, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    fs, final = storage.filesystem(str(out))
    with storage.claimed(fs, final, output, "--output"):
        check_output(out, output, overwrite)  # again, once claimed: what is there now is all it may replace
        before = storage.fingerprint(fs, final)
        write_folder(predictor, checkpoint, fs, final, output, before)
    return out


def is_trees(predictor: Predictor) -> bool:
    from app.boosting import BoosterModule

    return isinstance(predictor.model, BoosterModule)


def check_output(out: Path, output: str, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise UserError(f"--output {output} already exists and is not empty; remove it or pass --overwrite")
        storage.check_replaceable(str(out), "--output")  # only a folder this app wrote is replaced


def write_folder(predictor: Predictor, checkpoint: str, fs: storage.FileSystem, final: str, output: str,
                 before: tuple | None) -> None:
    """The export, written beside `final` and then switched in, unless what is at `final` is
    no longer `before` (`storage.changed_since`)."""
    state = predictor.state
    with storage.staged(fs, final) as staging_path:
        staging = Path(staging_path)
        staging.mkdir()
        if is_trees(predictor):
            module = predictor.model  # its rounds up to the best one, in XGBoost's own format
            (staging / BOOSTER_FILE).write_bytes(bytes(module.booster[:module.rounds].save_raw(raw_format="ubj")))
        else:
            write_onnx(predictor, staging / MODEL_FILE)
            write_torchscript(predictor, staging / TORCHSCRIPT_FILE)
        (staging / "preprocess.json").write_text(state.to_json())
        (staging / "schema.json").write_text(json.dumps(predictor.schema(), indent=1))
        if predictor.calibration:
            (staging / CALIBRATION_FILE).write_text(json.dumps(predictor.calibration, indent=1))
        here = Path(__file__).resolve().parent
        shutil.copy(here / "data" / "transform.py", staging / "preprocess.py")
        shutil.copy(here / "exported" / "predict.py", staging / "predict.py")
        (staging / "README.md").write_text(readme(predictor, checkpoint))
        storage.mark_owned(staging_path, "export")
        storage.changed_since(fs, final, before, output, "--output", staging_path)
        storage.publish_dir(fs, staging_path, final)  # a failure leaves the old folder whole


def example_inputs(predictor: Predictor, rows: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    state = predictor.state
    return torch.zeros(rows, state.numeric_width), torch.zeros(rows, len(state.categorical), dtype=torch.long)


def write_torchscript(predictor: Predictor, path: Path) -> None:
    """A traced TorchScript module with the ONNX model's inputs and output, for PyTorch
    runtimes (torch.jit.load; C++ through libtorch). Any batch size works."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks inside the model
        traced = torch.jit.trace(_Exported(predictor).eval(), example_inputs(predictor), check_trace=False)
    traced.save(str(path))


def write_onnx(predictor: Predictor, path: Path) -> None:
    state = predictor.state
    module = _Exported(predictor).eval()
    example = example_inputs(predictor)  # any batch size works: the batch dimension is exported as dynamic
    batch = torch.export.Dim("batch")
    output = "probabilities" if state.task == "classification" else "prediction"
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" etc.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and renaming chatter
        torch.onnx.export(module, example, str(path), dynamo=True, input_names=["x_num", "x_cat"],
                          output_names=[output], dynamic_shapes=({0: batch}, {0: batch}),
                          external_data=False, verbose=False)


def calibration_line(predictor: Predictor) -> str:
    cal = predictor.calibration
    if not cal:
        return ""
    cut = (f"; `prediction` is the second class where its probability is at least {predictor.threshold:.4g}"
           if predictor.threshold is not None else "")
    where = "applied by predict.py to the trees' margins" if is_trees(predictor) else "already applied inside the models"
    return (f"\n- `{CALIBRATION_FILE}`: the calibration fitted after training (temperature "
            f"{predictor.temperature:.4g}, {where}{cut}).")


def model_lines(predictor: Predictor, task: str) -> str:
    state = predictor.state
    if is_trees(predictor):
        return (f"- `{BOOSTER_FILE}`: the gradient-boosted trees in XGBoost's own format (load with\n"
                f"  `xgboost.Booster().load_model(...)`), reading `tree_inputs` of the prepared arrays\n"
                f"  ({len(state.numeric)} numeric then {len(state.categorical)} categorical columns); "
                f"`predict.py` needs `pip install xgboost numpy pandas`.")
    output = "`probabilities` [rows, classes]" if task == "classification" else "`prediction` [rows]"
    return (f"- `model.onnx` (and `model_torchscript.pt`, the same for `torch.jit.load`): inputs `x_num` (float32, "
            f"[rows, {state.numeric_width}]) and `x_cat` (int64,\n  [rows, {len(state.categorical)}]), the prepared "
            f"arrays; output\n  {output}.")


def readme(predictor: Predictor, checkpoint: str) -> str:
    s = predictor.schema()
    features = "\n".join(f"| {f['name']} | {f['kind']} | {f['type']} |" for f in s["features"])
    outputs = (f"`prediction` (one of {', '.join(map(str, s['classes']))}) and `proba_<class>` columns"
               if s["task"] == "classification" else "`prediction`, in the label's units")
    return f"""# Exported model: {s['task']} of `{s['label']}`

Exported from `{redact(checkpoint)}` (epoch {predictor.epoch}). Predicting needs only
`pip install {'xgboost' if is_trees(predictor) else 'onnxruntime'} numpy pandas` (and `pyarrow` for Parquet); no Ray, no PyTorch.

```
python predict.py input.csv output.csv
```

writes the input columns plus {outputs}. From Python:

```python
import sys; sys.path.insert(0, "path/to/this/folder")
from predict import Model
Model("path/to/this/folder").predict(df)      # df: a pandas DataFrame of raw rows
```

Missing values and categories never seen in training are handled as in training.

## Files
{model_lines(predictor, s['task'])}
- `preprocess.py` + `preprocess.json`: raw rows -> those arrays (the code training used).
- `predict.py`: the runner and the `Model` class above.
- `schema.json`: the expected columns.{calibration_line(predictor)}

## Input columns
| column | kind | type |
|---|---|---|
{features}
"""
