"""User-facing errors: a MaiError is a mistake the user can fix, shown as one line with exit code 2.

Anything else that escapes is a bug and keeps its traceback.
"""


class MaiError(Exception):
    """A user mistake (bad path, unknown preset, corrupt file...). The message says what to do."""

    exit_code = 2

    def __init__(self, message: str, *, parameter: str | None = None):
        super().__init__(message)
        self.parameter = parameter
