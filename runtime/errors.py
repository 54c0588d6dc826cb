"""The one base class for errors a user should see, and what each kind means to the CLI and to HTTP.

Every part raises a subclass of PersonaeError when the input or set-up is wrong (a bad card, an
unknown character, a damaged adapter, a busy generator). The CLI turns any of them into one line
and `exit_code`; the HTTP API into `http_status` with the message. Anything else is a bug and
is reported as one, without its internals reaching an HTTP client.
"""

from __future__ import annotations


class PersonaeError(Exception):
    """Something the user can fix; str(error) says what is wrong and what to do."""

    exit_code = 2
    http_status = 400
    code = "invalid_request"  # the machine-readable code in OpenAI-shaped error bodies


class NotFound(PersonaeError):
    """The thing asked for does not exist (a character, a version, a message)."""

    http_status = 404
    code = "not_found"


class Conflict(PersonaeError):
    """The request is valid but clashes with what is happening now (a training run already going)."""

    exit_code = 3
    http_status = 409
    code = "conflict"


class Busy(PersonaeError):
    """Too much work right now; retry after `retry_after` seconds."""

    exit_code = 3
    http_status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float = 1):
        self.retry_after = max(1, round(retry_after))
        super().__init__(message)


def exit_code(error: BaseException) -> int:
    """The CLI exit status for an error: its own for PersonaeErrors, 1 for bugs."""
    return error.exit_code if isinstance(error, PersonaeError) else 1


def http_status(error: BaseException) -> int:
    """The HTTP status for an error: its own for PersonaeErrors, 500 for bugs."""
    return error.http_status if isinstance(error, PersonaeError) else 500
