"""The `app` logger: what the library says, and how a command line shows it.

Library code never prints: each module logs through `logging.getLogger(__name__)`, a child
of the `app` logger. A notebook or a program of the user's decides what to show, as with
any library (`logging.getLogger("app").setLevel(...)`). `python -m app` shows what it
always did (`to_terminal`): INFO lines on stdout as they are, warnings and errors on stderr
after `warning: ` or `error: `. A Ray process of ours (a training worker) does the same, so its lines
reach the driver's terminal through Ray's log forwarding.
"""

from __future__ import annotations

import logging
import sys

NAME = "app"


class _TerminalHandler(logging.Handler):
    """INFO and below to stdout, the rest to stderr after `warning: ` or `error: `; the stream is looked up at each record,
    so a command's redacting streams (app/redact.py) are the ones written to."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.ERROR:
                stream, text = sys.stderr, f"error: {text}"
            elif record.levelno >= logging.WARNING:
                stream, text = sys.stderr, f"warning: {text}"
            else:
                stream = sys.stdout
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            stream.write(text + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def to_terminal(level: int = logging.INFO) -> None:
    """Show the `app` logger's records as a command line does. Idempotent; for `python -m
    app` and our own Ray processes, never called by library functions in the user's process."""
    logger = logging.getLogger(NAME)
    if not any(isinstance(h, _TerminalHandler) for h in logger.handlers):
        logger.addHandler(_TerminalHandler())
    logger.setLevel(level)
    logger.propagate = False


def install_default() -> None:
    """At `import app`: unless the program configured the `app` logger already (a handler),
    show its INFO lines as a command line does, as Ray does for its `ray` logger; a level
    set beforehand is kept. A program silences
    it with `logging.getLogger("app").setLevel(logging.WARNING)`, or replaces the handler."""
    logger = logging.getLogger(NAME)
    if logger.handlers:  # the program configured this logger: it decides
        return
    logger.addHandler(_TerminalHandler())
    logger.propagate = False  # (a root handler added later would print each line twice)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
