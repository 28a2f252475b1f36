"""Train, tune and serve PyTorch models on tabular data with Ray, from one YAML config.

    import app
    result = app.train("configs/quickstart.yaml")
    model = app.load_model(result.checkpoint)
    model.predict(df)

The public names below come from `app.api`, imported when first used so that `import app`
(and every Ray worker that unpickles one of our functions) stays cheap.
"""

from app import logs as _logs

_logs.install_default()

__all__ = [
    "Config", "Model", "RunResult", "SweepResult", "UserError",
    "baseline", "evaluate", "init_config", "load_config", "load_model", "predict", "train", "tune", "__version__",
]


def __getattr__(name: str):
    if name == "__version__":
        from app.version import version

        return version()
    if name in __all__:
        from app import api

        return getattr(api, name)
    raise AttributeError(f"module 'app' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
