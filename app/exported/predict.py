"""Predictions from this exported model, without Ray, PyTorch or the training package.

    pip install onnxruntime numpy pandas pyarrow      # xgboost instead of onnxruntime for model.ubj
    python predict.py input.csv output.csv            # or .parquet, either side

Or from Python, with this folder on sys.path:

    from predict import Model
    model = Model("path/to/this/folder")
    model.predict(pandas_dataframe)                   # -> input columns + prediction (+ proba_<class>)

`preprocess.py` is the very code that prepared the training data; `preprocess.json` is
its fitted state (quantiles or means and scales, category vocabularies, embedding bins);
`model.onnx` maps the prepared
arrays to class probabilities (calibrated, where training calibrated them), or to the
prediction in the label's own units. `calibration.json`, where present, holds a binary
model's decision threshold: `prediction` is the second class where its probability reaches it. A CSV file is
read as the app reads it: each feature with the type it had in training, every other
column as text, passed through as written; so the same rows get the same predictions here
as from the app's `predict`, whatever their format.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

CHUNK = 8192  # rows per model call: an ensemble's activations grow with the rows in one call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import BadValue, PreprocessState, not_a_number, transform, tree_inputs  # noqa: E402


class Model:
    def __init__(self, folder: str | Path = Path(__file__).resolve().parent):
        folder = Path(folder)
        self.state = PreprocessState.from_json((folder / "preprocess.json").read_text())
        calibration = folder / "calibration.json"
        calibration = json.loads(calibration.read_text()) if calibration.exists() else {}
        self.threshold = calibration.get("threshold")
        self.session = self.booster = None
        if (folder / "model.ubj").exists():  # gradient-boosted trees (model.kind: xgboost)
            import xgboost

            self.booster = xgboost.Booster()
            self.booster.load_model(bytearray((folder / "model.ubj").read_bytes()))
            self.temperature = float(calibration.get("temperature", 1.0))
        else:
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        absent = [c for c in self.state.features if c not in df.columns]
        if absent:
            raise BadValue(f"missing feature column(s): {', '.join(absent)} (the model reads: "
                           f"{', '.join(self.state.features)})")
        arrays = transform(df, self.state, with_label=False)
        if self.booster is not None:
            out = self.trees(arrays)
        else:
            names = [i.name for i in self.session.get_inputs()]
            out = np.concatenate([self.session.run(None, {n: arrays[n][i:i + CHUNK] for n in names})[0]
                                  for i in range(0, max(1, len(df)), CHUNK)])
        result = df.copy()
        if self.state.task == "classification":
            chosen = out.argmax(axis=1) if self.threshold is None else (out[:, 1] >= self.threshold).astype(np.int64)
            result["prediction"] = np.asarray(self.state.classes, dtype=object)[chosen]
            for i, c in enumerate(self.state.classes):
                result[f"proba_{c}"] = out[:, i].astype(np.float64)
        else:
            result["prediction"] = out.astype(np.float64)
        return result


    def trees(self, arrays: dict) -> np.ndarray:
        """What model.onnx gives, from the trees: class probabilities (a binary model's
        margin m is the logit pair [0, m]; logits divided by the calibration's temperature),
        or the prediction in the label's units."""
        margins = self.booster.inplace_predict(tree_inputs(arrays["x_num"], arrays["x_cat"], self.state),
                                               predict_type="margin", validate_features=False)
        margins = np.asarray(margins, dtype=np.float64)
        if self.state.task != "classification":
            return margins.reshape(-1) * self.state.target_std + self.state.target_mean
        k = len(self.state.classes)
        logits = np.stack([np.zeros(len(margins)), margins.reshape(-1)], axis=1) if k == 2 else margins.reshape(-1, k)
        logits = logits / self.temperature
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def read_csv(path: str, state: PreprocessState) -> pd.DataFrame:
    """A CSV file as the app reads it (pyarrow, "NA" and "" missing): features with their
    training types, every other column as text."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, "rb") as f:
        names = pacsv.open_csv(f).schema.names
    types = {n: pa.type_for_alias(state.input_types.get(n, "string")) if n in state.features else pa.string()
             for n in names}
    convert = pacsv.ConvertOptions(strings_can_be_null=True, column_types=types)
    try:
        return pacsv.read_csv(path, convert_options=convert).to_pandas()
    except pa.ArrowInvalid as e:  # a word in a numeric column: said as for every other input
        match = re.search(r"In CSV column #(\d+): .*CSV conversion error to \w+: invalid value '(.*)'$", str(e), re.S)
        if match is None or int(match.group(1)) >= len(names):
            raise
        raise BadValue(not_a_number(names[int(match.group(1))], match.group(2))) from None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    source, target = argv
    model = Model()
    try:
        df = pd.read_parquet(source) if source.endswith((".parquet", ".pq")) else read_csv(source, model.state)
        result = model.predict(df)
    except (OSError, ValueError) as e:  # a missing file or column, a word in a numeric column
        text = " ".join(str(e).split())
        print(f"error: {source}: {text}", file=sys.stderr)
        return 2
    if target.endswith((".parquet", ".pq")):
        result.to_parquet(target, index=False)
    else:
        result.to_csv(target, index=False)
    print(f"{len(result)} rows -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
