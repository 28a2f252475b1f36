"""Credentials inside URIs, hidden before any text leaves the process.

    redact("s3://AKIA123:wJalr%2Fx@bucket/runs")      -> "s3://AKIA123:***@bucket/runs"
    redact("http://h/x?access_key=AK&secret_key=SK")  -> "http://h/x?access_key=AK&secret_key=***"

A URI may carry its credentials (`scheme://user:password@host/...`, or a secret in its
query string). The process itself uses the real URI; what it prints, writes to the run
folder, checkpoints or MLflow is the redacted one. The user name (an access key id) stays:
it says which identity was used without granting anything.

This module imports nothing of the app, so any module may use it without a cycle.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any, TextIO

MASK = "***"

# Query parameters whose value is a secret (compared without case).
SECRET_PARAMS = (
    "secret_key", "secret_access_key", "aws_secret_access_key", "session_token", "aws_session_token",
    "security_token", "x-amz-security-token", "x-amz-signature", "password", "passwd", "pwd", "token",
    "access_token", "refresh_token", "id_token", "client_secret", "api_key", "apikey", "sig", "signature",
    "sas_token",
)

# `scheme://user:password@`: the password runs to the last `@` before the path (as RFC 3986
# spells it, percent-encoded; an `@` left unencoded is taken as part of it), or, for a secret
# pasted without encoding (AWS secret keys hold `/` and `+`), to the first `@`. A port and a
# path with an `@` in it (`http://host:8080/a@b`) read the same way and are masked too: a
# secret that starts with digits and a `/` cannot be told from a port, and hiding too much
# is the safe side.
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s'\"]*:)"
    r"(?P<password>[^/?#\s'\"]*|[^@\s'\"]*)"
    r"(?=@)")
_QUERY = re.compile(r"(?P<head>[?&;](?:" + "|".join(re.escape(p) for p in SECRET_PARAMS) + r")=)"
                    r"(?P<value>[^&#\s'\"]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the password of every URI in it, and secret query values, replaced by ***."""
    if "://" not in text and "=" not in text:
        return text  # nothing to hide; the common case stays cheap
    text = _USERINFO.sub(lambda m: m["head"] + MASK if m["password"] else m[0], text)
    return _QUERY.sub(lambda m: m["head"] + MASK if m["value"] else m[0], text)


def redact_tree(value: Any) -> Any:
    """A copy of a JSON-like tree (dicts, lists, strings, numbers) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(v) for v in value)
    return value


class RedactingStream:
    """A text stream that redacts whatever is written through it, then passes it on.

    Installed as sys.stdout and sys.stderr while a command runs, it covers every line the
    process prints: the app's own, and those of Ray, MLflow and the workers' output that
    Ray forwards to the driver."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer, ...
        return getattr(self.stream, name)


@contextlib.contextmanager
def redacted_output() -> Iterator[None]:
    """`with redacted_output(): ...`: sys.stdout and sys.stderr redact while inside."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
