"""The gateway's typed errors; one exception handler turns each into its HTTP answer.

    GatewayError                  500 INTERNAL_ERROR
    ├── Unauthorized              401 UNAUTHORIZED / INVALID_API_KEY
    ├── Forbidden                 403 FORBIDDEN
    ├── InsufficientCredits       402 INSUFFICIENT_CREDITS
    ├── NotFound                  404 NOT_FOUND (FLOW_NOT_FOUND, EXECUTION_NOT_FOUND, ...)
    ├── Conflict                  409 CONFLICT (USER_EXISTS, EXECUTION_TERMINAL, ...)
    ├── PayloadTooLarge           413 PAYLOAD_TOO_LARGE (a body or message over its limit)
    ├── InvalidInput              422 VALIDATION_ERROR
    ├── RateLimited               429 RATE_LIMITED (with Retry-After)
    └── Unavailable               503 SERVICE_UNAVAILABLE (a reply that did not come in time;
                                  QUEUE_FULL with Retry-After: too many executions wait)

Every answer has the body ``{"detail", "code", "message", "error_code"}``: FastAPI's
``detail`` plus the ``message``/``error_code`` pair the original's published SDK reads.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .models import ErrorBody


class GatewayError(Exception):
    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.headers = headers or {}
        self.extra = extra or {}


class Unauthorized(GatewayError):
    status = 401
    default_code = "UNAUTHORIZED"


class Forbidden(GatewayError):
    status = 403
    default_code = "FORBIDDEN"


class InsufficientCredits(GatewayError):
    status = 402
    default_code = "INSUFFICIENT_CREDITS"


class NotFound(GatewayError):
    status = 404
    default_code = "NOT_FOUND"


class Conflict(GatewayError):
    status = 409
    default_code = "CONFLICT"


class PayloadTooLarge(GatewayError):
    status = 413
    default_code = "PAYLOAD_TOO_LARGE"


class InvalidInput(GatewayError):
    status = 422
    default_code = "VALIDATION_ERROR"


class RateLimited(GatewayError):
    status = 429
    default_code = "RATE_LIMITED"


class Unavailable(GatewayError):
    status = 503
    default_code = "SERVICE_UNAVAILABLE"


#: ``GatewayReply.error_code`` values from the services, and the error each becomes.
REPLY_ERRORS: dict[str, type[GatewayError]] = {
    "INSUFFICIENT_CREDITS": InsufficientCredits,
    "QUEUE_FULL": Unavailable,
    "USER_EXISTS": Conflict,
    "USER_NOT_FOUND": NotFound,
    "RESERVATION_NOT_FOUND": NotFound,
    "RESERVATION_WITHDRAWN": Conflict,
    "KEY_NOT_FOUND": NotFound,
    "KEY_LIMIT_REACHED": Conflict,
    "KEY_EXISTS": Conflict,
    "INVALID_KEY_REQUEST": InvalidInput,
    "FLOW_EXISTS": Conflict,
    "FLOW_ID_TAKEN": Conflict,
    "FLOW_NOT_FOUND": NotFound,
    "INVALID_FLOW": InvalidInput,
    "NOT_OWNER": Forbidden,
    "AGENT_ID_TAKEN": Conflict,
    "AGENT_NOT_FOUND": NotFound,
    "INVALID_AGENT": InvalidInput,
}

_STATUS_CODES: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    402: "INSUFFICIENT_CREDITS",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    503: "SERVICE_UNAVAILABLE",
}


def from_reply(
    error_code: str | None, message: str | None, body: dict[str, Any] | None = None
) -> GatewayError:
    """The error a refused command's reply stands for (unknown codes: 409); a reply that
    suggests when to come back (``retry_after``, e.g. QUEUE_FULL) sets ``Retry-After``."""
    cls = REPLY_ERRORS.get(error_code or "", Conflict)
    retry_after = (body or {}).get("retry_after")
    headers = {"Retry-After": str(int(retry_after))} if retry_after else None
    return cls(message or (error_code or "refused"), code=error_code or None, headers=headers)


def code_for_status(status: int) -> str:
    return _STATUS_CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "ERROR")


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The one error shape of the API."""
    return {"detail": message, "code": code, "message": message, "error_code": code, **extra}


_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request",
    401: "Missing, unknown or revoked API key",
    402: "Not enough credits for the flow's cost",
    403: "The wrong kind of key (master vs user)",
    404: "Unknown, or another tenant's",
    409: "State conflict",
    413: "The body, or the Kafka message it makes, is over its size limit",
    422: "Invalid body, query, path or header",
    429: "Over the per-minute rate limit (see Retry-After)",
    503: "A dependency did not answer in time",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with the one error body."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS.get(s, "Error")} for s in statuses}


_REPLAY: dict[int, type[GatewayError]] = {
    401: Unauthorized,
    402: InsufficientCredits,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidInput,
}


def replayed(status: int, code: str, message: str, extra: dict[str, Any]) -> GatewayError:
    """The error a stored idempotent answer stands for (same status, code and message)."""
    cls = _REPLAY.get(status, Conflict)
    return cls(message, code=code, extra=extra)
