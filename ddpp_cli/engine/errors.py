"""The one exception type for mistakes a user can fix."""


class DdppError(Exception):
    """A user-facing error: bad input, missing data, an incompatible file.

    The message is a complete sentence that says what is wrong and how to fix it. The CLI prints
    it on one line and exits with status 2; anything else escaping the engine is a bug.
    """
