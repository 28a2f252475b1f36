"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a one-line message on stderr and exit code 2; anything else
is a bug or an infrastructure failure and exits 1 with its traceback.
"""


class UserError(Exception):
    """Bad usage, bad config or bad input. The message names what and where."""


def causes(error: BaseException):
    """The error and everything it wraps: Python's cause/context chain, Ray's `.cause`,
    and the per-worker and controller failures of Ray Train's errors."""
    seen, stack = set(), [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__,
                  getattr(e, "controller_failure", None)]
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            stack += list(failures.values())


def find_user_error(error: BaseException) -> UserError | None:
    """A UserError raised here, or inside a Ray task, actor or training worker."""
    return next((e for e in causes(error) if isinstance(e, UserError)), None)
