"""The installed distribution's version (`raytab --version`, `app.__version__`)."""

from __future__ import annotations

DISTRIBUTION = "raytab"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source checkout that was never installed
        return "0+unknown"
