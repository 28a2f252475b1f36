"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a one-line message on stderr and exit code 2; anything else
is a bug or an infrastructure failure and exits 1 with its traceback.
"""


class UserError(Exception):
    """Bad usage, bad config or bad input. The message names what and where."""
