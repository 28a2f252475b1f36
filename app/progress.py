"""Progress bars where someone watches, nothing where output is logged.

    python -m app train --config configs/quickstart.yaml    # in a terminal: bars; piped or CI: none

A bar is shown when the driver's output is interactive, as tqdm and Ray Data decide it: its
stderr is a terminal, or the process is a Jupyter kernel; never with $CI set (CI runners
keep their output as a log). Everywhere else `bar` returns a bar that does nothing, so the
code that ticks it is the same either way and a logged run carries no `\\r` frames.

Two kinds, one interface (`update`, `set_description`, `close`, a context manager):
- on the driver (the data step, baselines, feature importance): tqdm itself, redrawn at most
  twice a second (`MIN_INTERVAL_S`), cleared when done so that the next line starts clean;
- in a Ray worker (rank 0's steps in an epoch): Ray's distributed tqdm
  (`ray.experimental.tqdm_ray`), whose state rank 0 prints as one line at most twice a second
  and which the driver draws below the workers' forwarded lines. A worker cannot see the
  driver's terminal, so the driver decides (`shown()`) and passes that in the loop's config.
"""

from __future__ import annotations

import os
import sys
from typing import Any

MIN_INTERVAL_S = 0.5  # the most often a bar is redrawn (or, in a worker, sent to the driver)


def shown(stream: Any = None) -> bool:
    """Whether progress bars are drawn for this process's output (`stream`: default stderr,
    where tqdm writes): a terminal or a notebook, and not CI."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if in_notebook():
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's kernel shell is loaded and running)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class _NoBar:
    """What `bar` and `worker_bar` return where nothing is shown: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def epoch(self, desc: str, total: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


NO_BAR = _NoBar()


def bar(desc: str, total: int | None = None, unit: str = "it", *, show: bool | None = None):
    """A bar on the driver (tqdm to stderr), or `NO_BAR` unless `show` (default: `shown()`)."""
    if not (shown() if show is None else show):
        return NO_BAR
    from tqdm.std import tqdm

    return tqdm(desc=desc, total=total, unit=unit, mininterval=MIN_INTERVAL_S, leave=False, file=sys.stderr,
                dynamic_ncols=True)


class WorkerBar:
    """Rank 0's bar of the steps of each epoch, drawn by the driver (Ray's distributed tqdm):
    one bar for the worker's life, set back to 0 as each epoch starts."""

    def __init__(self, unit: str = "step"):
        from ray.experimental import tqdm_ray

        self._bar = tqdm_ray.tqdm(desc="", total=0, unit=unit, flush_interval_s=MIN_INTERVAL_S)

    def epoch(self, desc: str, total: int) -> None:
        self._bar.n = 0
        self._bar.total = total
        self._bar.set_description(desc)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def worker_bar(show: bool):
    """A `WorkerBar` where the driver shows bars (`show`, from the loop's config), else one that does nothing."""
    return WorkerBar() if show else NO_BAR


def tick(result: Any, bar: Any, count: bool = True) -> Any:
    """`result`, after one tick of `bar` (where `count`): for counting in a comprehension."""
    if count:
        bar.update()
    return result


def wait(refs: list, bar: Any) -> None:
    """Tick `bar` as each of the Ray object refs `refs` becomes ready, fetching nothing to
    this process; return at once where the bar shows nothing (the caller gets them as before)."""
    if bar is NO_BAR or not refs:
        return
    import ray

    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=MIN_INTERVAL_S, fetch_local=False)
        bar.update(len(done))
