"""The two kinds of error mai reports, the same way on the command line and over HTTP.

A MaiError is a mistake the user can fix (a bad path, an unknown preset, a corrupt file, a bad
request): one line that says what to do, exit code 2 on the command line, an HTTP 4xx naming the
offending `parameter` from the server and the gateway. An InternalError is the server's own failure
that a client must still be told about (the engine failed, every backend failed): an HTTP 5xx.
Anything else that escapes is a bug and keeps its traceback.
"""


class MaiError(Exception):
    """A user mistake; the message says what to do."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        parameter: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.parameter, self.status, self.type, self.headers = parameter, status, type, headers


class InternalError(Exception):
    """A failure on the server's side, answered to the client as an HTTP 5xx."""

    def __init__(self, message: str, *, status: int = 500):
        super().__init__(message)
        self.status = status
