"""The optional parts of the `raytab` distribution, and the check that one is installed.

    pip install raytab                 # train, tune, evaluate, predict, baseline, submit
    pip install 'raytab[serve]'        # + serve        (Ray Serve, FastAPI)
    pip install 'raytab[export]'       # + export       (ONNX: onnx, onnxscript, onnxruntime)
    pip install 'raytab[tracking]'     # + tracking.*   (MLflow, TensorBoard)
    pip install 'raytab[report]'       # + report, and a sweep's curves.png (matplotlib)
    pip install 'raytab[xgboost]'      # + model.kind: xgboost (XGBoost)
    pip install 'raytab[all]'          # all of them

A command that needs an extra calls `require` first, so that a missing one is one clear
line (a `UserError`: exit 2) rather than an ImportError's traceback from deep inside.
"""

from __future__ import annotations

import importlib.util

from app.errors import UserError
from app.version import DISTRIBUTION

EXTRAS = ("serve", "export", "tracking", "report", "xgboost")  # pyproject.toml's; `all` is all of them


def missing(*modules: str) -> list[str]:
    """Those of `modules` that cannot be imported here. Cheap: finds them, imports nothing
    (but the parent package of a dotted name)."""
    absent = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a dotted name whose parent is missing, or not a package
            found = False
        if not found:
            absent.append(module)
    return absent


def require(extra: str, *modules: str, what: str | None = None, hint: str = "") -> None:
    """Raise a UserError naming `pip install 'raytab[EXTRA]'` unless every one of `modules`
    can be imported. `what` names what needs them (default: the `EXTRA` command)."""
    absent = missing(*modules)
    if absent:
        raise UserError(f"{what or f'the {extra} command'} needs the {extra} extra: "
                        f"pip install '{DISTRIBUTION}[{extra}]' (missing: {', '.join(absent)}){hint}")
