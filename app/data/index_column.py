"""A pandas index saved into a CSV (`df.to_csv()` without `index=False`): a first column with
an empty header, or `Unnamed: 0` once read and written again by pandas. Trained on as a
feature it is a row number, which teaches the model the file's row order."""

from __future__ import annotations

import logging
import re

from app.config import DataConfig

log = logging.getLogger(__name__)

_INDEX_NAME = re.compile(r"|Unnamed: \d+")


def saved_index_columns(features: list[str]) -> list[str]:
    """The feature columns whose names are those pandas gives a saved, unnamed index."""
    return [name for name in features if _INDEX_NAME.fullmatch(name)]


def warn_saved_index(features: list[str], data: DataConfig) -> list[str]:
    """Warn when the features, chosen by default (not listed in `data.features`), include a
    column that looks like a saved pandas index; return those columns."""
    found = [] if data.features is not None else saved_index_columns(features)
    if found:
        listed = ", ".join(repr(name) for name in found)
        log.warning(f"data.train: column(s) {listed} look like a pandas index saved with the data (an empty or "
                    f"'Unnamed: N' header) and would be trained on as features; leave them out with "
                    f"data.drop: [{listed}], or write the file with to_csv(index=False)")
    return found
