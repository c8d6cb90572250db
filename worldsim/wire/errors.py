"""Errors on the wire: one exception type, and the reason <-> exception table server and client share.

A server refuses a call with a gRPC status code and an ``ErrorReason`` name in the
``worldsim-error-reason`` trailing metadata; the client turns that back into the same exception
class (as dm_env_rpc's ``v1/error.py`` does with its status). Every class is a
:class:`RemoteError` carrying ``code`` (the ``grpc.StatusCode`` name) and ``reason`` (the
``ErrorReason`` name); each also derives from the built-in exception a Python caller would catch
(``LookupError``, ``ValueError``, ...).

    raise SessionNotFound("session 'x' was closed")          # server side
    code, metadata = status(e)                               # -> context.abort(code, str(e), metadata)
    raise from_rpc_error(rpc_error)                          # client side: the same class again

Every error a server sends goes through :func:`abort`: its message is cut to
:data:`MAX_MESSAGE_BYTES` (:func:`bounded`) and the reason trailer is always set. Strings a
client sent are quoted into messages with :func:`clip` (escaped, a short prefix), so that a
100,000-character id never turns into an oversize status header.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from worldsim.spaces import ActionError

REASON_KEY = "worldsim-error-reason"
"""Trailing-metadata key naming the ``worldsim.v1.ErrorReason`` of a refused call."""


class RemoteError(Exception):
    """An error a worldsim server reports (or one met while talking to it).

    ``code``: the gRPC status name (``"NOT_FOUND"``); ``reason``: the ``ErrorReason`` name
    (``"ERROR_REASON_SESSION_NOT_FOUND"``, empty when the server named none).
    """

    code = "UNKNOWN"
    reason = "ERROR_REASON_UNSPECIFIED"

    def __init__(self, message: str, code: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason


class WorldNotFound(RemoteError, LookupError):
    """The server does not host that world (NOT_FOUND)."""

    code, reason = "NOT_FOUND", "ERROR_REASON_WORLD_NOT_FOUND"


class SessionNotFound(RemoteError, LookupError):
    """The session was closed or evicted after being idle (NOT_FOUND)."""

    code, reason = "NOT_FOUND", "ERROR_REASON_SESSION_NOT_FOUND"


class InvalidAction(RemoteError, ActionError):
    """The action does not fit the world's action space (INVALID_ARGUMENT); also a ValueError."""

    code, reason = "INVALID_ARGUMENT", "ERROR_REASON_INVALID_ACTION"


class InvalidArgument(RemoteError, ValueError):
    """Another malformed request, e.g. context frames of the wrong shape (INVALID_ARGUMENT)."""

    code, reason = "INVALID_ARGUMENT", "ERROR_REASON_INVALID_ARGUMENT"


class ResourceExhausted(RemoteError):
    """Too many sessions on the world, or a message larger than the server accepts."""

    code, reason = "RESOURCE_EXHAUSTED", "ERROR_REASON_SESSION_LIMIT"


class EpisodeEnded(RemoteError):
    """Stepped after ``terminated`` or ``truncated`` without ``reset()`` (FAILED_PRECONDITION)."""

    code, reason = "FAILED_PRECONDITION", "ERROR_REASON_EPISODE_ENDED"


class StepInFlight(RemoteError):
    """A second step for a session while its first one waits (FAILED_PRECONDITION)."""

    code, reason = "FAILED_PRECONDITION", "ERROR_REASON_STEP_IN_FLIGHT"


class Unauthenticated(RemoteError, PermissionError):
    """Missing or wrong token (UNAUTHENTICATED)."""

    code, reason = "UNAUTHENTICATED", "ERROR_REASON_UNAUTHENTICATED"


class Unsupported(RemoteError):
    """The server cannot do that, e.g. JPEG frames without Pillow (UNIMPLEMENTED)."""

    code, reason = "UNIMPLEMENTED", "ERROR_REASON_UNSUPPORTED_ENCODING"


class Unavailable(RemoteError, ConnectionError):
    """The server cannot be reached or is shutting down (UNAVAILABLE)."""

    code = "UNAVAILABLE"


class DeadlineExceeded(RemoteError, TimeoutError):
    """The call took longer than the client's timeout (DEADLINE_EXCEEDED)."""

    code = "DEADLINE_EXCEEDED"


BY_REASON: dict[str, type[RemoteError]] = {
    cls.reason: cls
    for cls in (
        WorldNotFound,
        SessionNotFound,
        InvalidAction,
        InvalidArgument,
        ResourceExhausted,
        EpisodeEnded,
        StepInFlight,
        Unauthenticated,
        Unsupported,
    )
}
"""``ErrorReason`` name -> exception class: the table both sides use."""

BY_CODE: dict[str, type[RemoteError]] = {
    "NOT_FOUND": SessionNotFound,
    "INVALID_ARGUMENT": InvalidArgument,
    "UNAUTHENTICATED": Unauthenticated,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "FAILED_PRECONDITION": EpisodeEnded,
    "UNIMPLEMENTED": Unsupported,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}
"""Status name -> exception class, for errors that carry no reason (transport, proxies, old servers)."""


def status(error: RemoteError) -> tuple[grpc.StatusCode, tuple[tuple[str, str], ...]]:
    """Server side: the status code and trailing metadata to abort a call with for ``error``."""
    return getattr(grpc.StatusCode, error.code), ((REASON_KEY, error.reason),)


MAX_MESSAGE_BYTES = 512
"""Longest status message a server sends (UTF-8 bytes); longer ones are cut by :func:`bounded`."""


def clip(text: object, limit: int = 48) -> str:
    """A client-supplied string as it may appear in a status message: escaped (repr), at most ``limit`` characters."""
    s = str(text)
    return repr(s) if len(s) <= limit else f"{s[:limit]!r}... ({len(s)} characters)"


def bounded(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` cut to at most ``limit`` UTF-8 bytes, saying how long it was."""
    raw = message.encode("utf-8", "backslashreplace")
    if len(raw) <= limit:
        return message
    tail = f"... (cut from {len(raw)} bytes)"
    return raw[: limit - len(tail)].decode("utf-8", "ignore") + tail


async def abort(context: Any, code: str, reason: str, message: str) -> NoReturn:
    """Server side: end the call with ``code`` (a ``grpc.StatusCode`` name), the bounded message and the reason trailer."""
    await context.abort(getattr(grpc.StatusCode, code), bounded(message), trailing_metadata=((REASON_KEY, reason),))
    raise AssertionError("unreachable")  # context.abort raises


def from_rpc_error(e: grpc.RpcError) -> RemoteError:
    """Client side: a ``grpc.RpcError`` -> the matching :class:`RemoteError` (by reason, else by code).

    The message is the server's own (for an invalid action, exactly what the local env says).
    """
    code: Any = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    detail = (e.details() if hasattr(e, "details") else None) or str(e)
    reason = ""
    trailing = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == REASON_KEY:
            reason = value if isinstance(value, str) else value.decode()
    cls = BY_REASON.get(reason) or BY_CODE.get(code.name, RemoteError)
    return cls(detail, code=code.name, reason=reason or "ERROR_REASON_UNSPECIFIED")


__all__ = [
    "REASON_KEY",
    "RemoteError",
    "WorldNotFound",
    "SessionNotFound",
    "InvalidAction",
    "InvalidArgument",
    "ResourceExhausted",
    "EpisodeEnded",
    "StepInFlight",
    "Unauthenticated",
    "Unsupported",
    "Unavailable",
    "DeadlineExceeded",
    "BY_REASON",
    "BY_CODE",
    "status",
    "MAX_MESSAGE_BYTES",
    "clip",
    "bounded",
    "abort",
    "from_rpc_error",
]
