"""The `app` logger: what the library says, and how a command line shows it.

Library code never prints: each module logs through `logging.getLogger(__name__)`, a child
of the `app` logger. A notebook or a program of the user's decides what to show, as with
any library (`logging.getLogger("app").setLevel(...)`). `python -m app` shows what it
always did (`to_terminal`): INFO lines on stdout as they are, warnings and errors on stderr
after `warning: ` or `error: `. A Ray process of ours (a training worker) does the same, so its lines
reach the driver's terminal through Ray's log forwarding; in a sweep each line of a trial's
processes starts with the trial's id (`prefix_lines`).

`run_log` keeps what a run prints in its folder as `train.log`: the driver's lines and the
workers' lines that Ray forwards to it, credentials redacted, progress bars left out.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from app.redact import redact

NAME = "app"


class _TerminalHandler(logging.Handler):
    """INFO and below to stdout, the rest to stderr after `warning: ` or `error: `; the stream is looked up at each record,
    so a command's redacting streams (app/redact.py) are the ones written to."""

    prefix = ""  # before each line (`prefix_lines`)

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
            if self.prefix:
                text = "\n".join(self.prefix + line for line in text.split("\n"))
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


def prefix_lines(prefix: str) -> None:
    """Start each line that this process's `app` logger shows with `prefix` ("" for none): a
    Tune trial's processes say which trial they belong to, as their lines interleave on the
    sweep's terminal. For processes of one run only (a trial's, its workers'), never the user's."""
    for handler in logging.getLogger(NAME).handlers:
        if isinstance(handler, _TerminalHandler):
            handler.prefix = prefix


# ---------------------------------------------------------------- train.log

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours (Ray's line prefixes) and cursor moves
_CURSOR_UP = "\x1b[A"


class RunLog:
    """A run's `train.log`: the lines written to it (`write`, as a stream gets them),
    redacted and without terminal colours; a write holding a carriage return or moving the
    cursor up is a progress bar's frame (tqdm draws each frame, and clears it, in one write
    that starts with `\\r`) and is left out, as are the newlines written between frames (to
    another bar's row, or below a finished bar). So a run's log reads the same whether it ran
    in a terminal or not.

    Appended to: a run that resumes adds its lines after the earlier attempts'. On a local
    disk (or a shared filesystem) each line is written as it comes; on object storage, which
    cannot append, the whole log is uploaded again at most every `UPLOAD_S` seconds and at
    the end, so a driver killed outright loses at most its last seconds of lines."""

    UPLOAD_S = 5.0

    def __init__(self, uri: str):
        self.uri = uri
        self._lock = threading.Lock()
        self._line = ""  # the line being written, until its newline
        self._after_bar = False
        self._closed = False
        self._opened = False  # on the first line: a run that printed nothing leaves no file
        self._file: TextIO | None = None
        self._text: str | None = None  # on object storage: the whole log so far
        self._uploaded_at = -float("inf")

    def _open(self) -> None:
        from app import storage

        self._opened = True
        fs, path = storage.filesystem(self.uri)
        if storage.is_local(fs):
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by `close`
        else:
            self._text = storage.read_text(self.uri) or ""

    def write(self, text: str) -> None:
        if not text:
            return
        failed = None
        with self._lock:
            if self._closed:
                return
            if "\r" in text or _CURSOR_UP in text:
                self._after_bar = True
                return
            if self._after_bar and not self._line and not text.strip("\n"):
                return  # newlines between a bar's frames: moving to another bar's row, or leaving one on screen
            self._after_bar = False
            *lines, self._line = (self._line + text).split("\n")
            if lines:
                failed = self._append(lines)
        if failed is not None:  # (outside the lock: the warning is itself written here)
            logging.getLogger(__name__).warning(f"{self.uri}: not written further ({failed})")

    def _append(self, lines: list[str], *, final: bool = False) -> str | None:
        """Write `lines`; on failure stop logging and say why (never raises into the printer)."""
        from app import storage

        text = "".join(redact(_ANSI.sub("", line)) + "\n" for line in lines)
        try:
            if not self._opened:
                self._open()
            if self._file is not None:
                self._file.write(text)
                self._file.flush()
            else:
                self._text += text
                if final or time.monotonic() - self._uploaded_at >= self.UPLOAD_S:
                    storage.write_text(self.uri, self._text)
                    self._uploaded_at = time.monotonic()
        except Exception as e:  # noqa: BLE001 - a log that cannot be written never stops the run
            self._closed = True
            return " ".join(str(e).split())[:200] or type(e).__name__
        return None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._line or self._text is not None:
                self._append([self._line] if self._line else [], final=True)
            self._closed = True
            if self._file is not None:
                self._file.close()


class _Tee:
    """A text stream that passes everything on and also hands it to a `RunLog`."""

    def __init__(self, stream: TextIO, log: RunLog):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if isinstance(text, str):
            self.log.write(text)
        return written

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer, ...
        return getattr(self.stream, name)


@contextlib.contextmanager
def run_log(uri: str) -> Iterator[RunLog]:
    """`with run_log(folder/train.log): ...`: what this process prints on stdout and stderr
    while inside is also appended to `uri` (a `RunLog`): the app's lines, and the workers'
    lines that Ray prints here. sys.stdout and sys.stderr are put back on the way out."""
    log = RunLog(uri)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    try:
        yield log
    finally:
        sys.stdout, sys.stderr = saved
        log.close()
