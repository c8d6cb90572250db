"""What every call goes through before a servicer sees it.

``grpc.aio`` runs server interceptors in order; the server installs
``[TokenAuthInterceptor (auth.py, only with a token), RequestGuard]``, so a call without the token
is refused before its method is looked up or its body decoded. :class:`RequestGuard` then

- answers a method this server does not have with UNIMPLEMENTED (``ERROR_REASON_UNKNOWN_METHOD``);
- refuses a body over ``--max-message-bytes`` with RESOURCE_EXHAUSTED
  (``ERROR_REASON_MESSAGE_TOO_LARGE``). gRPC's own limit is set higher (:func:`grpc_ceiling`:
  4x, and at least 1 MiB more), so the application sees (and can label) oversize requests;
  beyond that ceiling gRPC cuts the call off itself, still RESOURCE_EXHAUSTED but without the
  trailer (the application never sees the call), so no request can make the server buffer more;
- refuses a body that does not decode as the method's request message with INVALID_ARGUMENT
  (``ERROR_REASON_MALFORMED_REQUEST``) instead of gRPC's UNKNOWN, and logs it at warning level,
  at most once per client per minute and never with a traceback (:class:`ClientWarnings`).

The request deserialiser never raises: it returns a :class:`Refusal` that the wrapped behaviour
turns into the status (for streaming requests, when the stream reaches that message).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from worldsim.wire.errors import abort, clip

log = logging.getLogger(__name__)


def grpc_ceiling(max_message_bytes: int) -> int:
    """gRPC's hard receive limit for a server that refuses bodies over ``max_message_bytes`` itself."""
    return max(4 * max_message_bytes, max_message_bytes + (1 << 20))


def client_of(context: Any) -> str:
    """Who a call comes from: its peer address without the port (``ipv4:10.0.0.7``)."""
    peer = str(context.peer() or "unknown")
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return peer


class ClientWarnings:
    """Rate-limited warnings: at most one per client per ``every`` seconds and ``burst`` in all.

    Suppressed ones are counted and reported with the client's next warning, so a flood of bad
    requests costs a few log lines a minute. At most ``max_clients`` clients are remembered.
    """

    def __init__(self, logger: logging.Logger, every: float = 60.0, burst: int = 10, max_clients: int = 1024):
        self.logger, self.every, self.burst, self.max_clients = logger, every, burst, max_clients
        self._clients: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._recent: deque[float] = deque()

    def warn(self, client: str, message: str) -> bool:
        """Log ``message`` for ``client`` unless rate-limited; True when it was logged."""
        now = time.monotonic()
        last, suppressed = self._clients.get(client, (-float("inf"), 0))
        while self._recent and now - self._recent[0] > self.every:
            self._recent.popleft()
        if now - last < self.every or len(self._recent) >= self.burst:
            self._clients[client] = (last, suppressed + 1)
            return False
        self._clients[client] = (now, 0)
        self._clients.move_to_end(client)
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        self._recent.append(now)
        more = f"; {suppressed} more from this client since its last warning" if suppressed else ""
        self.logger.warning("%s (from %s%s)", message, client, more)
        return True


@dataclass(frozen=True)
class Refusal:
    """A request the guard refuses; ``warn``: also log it (rate-limited)."""

    code: str
    reason: str
    message: str
    warn: bool = False


def _message_name(deserializer: Any) -> str:
    cls = getattr(deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "the method's request message"))


class RequestGuard(grpc.aio.ServerInterceptor):
    """Unknown methods, oversize and undecodable bodies get a labelled status (see the module doc)."""

    def __init__(self, max_message_bytes: int, warnings: ClientWarnings | None = None) -> None:
        self.max_bytes = max_message_bytes
        self.warnings = warnings or ClientWarnings(log)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = str(details.method)
        if handler is None:
            return refusing_handler(
                "UNIMPLEMENTED", "ERROR_REASON_UNKNOWN_METHOD", f"this server has no method {clip(method, 80)}"
            )
        return self._wrap(handler, method)

    def _deserializer(self, deserializer: Any, method: str) -> Callable[[bytes], Any]:
        limit, name = self.max_bytes, _message_name(deserializer)

        def decode(raw: bytes) -> Any:
            if len(raw) > limit:
                return Refusal(
                    "RESOURCE_EXHAUSTED",
                    "ERROR_REASON_MESSAGE_TOO_LARGE",
                    f"{method}: the request has {len(raw)} bytes, more than this server accepts ({limit}, "
                    "its --max-message-bytes): send smaller requests, or raise the limit on the server",
                )
            if deserializer is None:
                return raw
            try:
                return deserializer(raw)
            except Exception as e:  # noqa: BLE001 - DecodeError, or whatever a deserialiser raises on garbage
                return Refusal(
                    "INVALID_ARGUMENT",
                    "ERROR_REASON_MALFORMED_REQUEST",
                    f"{method}: the request body ({len(raw)} bytes) is not a valid {name} ({type(e).__name__}); "
                    "build requests from proto/worldsim/v1/world.proto",
                    warn=True,
                )

        return decode

    async def _refuse(self, refusal: Refusal, context: Any) -> None:
        if refusal.warn:
            self.warnings.warn(client_of(context), refusal.message)
        await abort(context, refusal.code, refusal.reason, refusal.message)

    def _checked(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async def gen() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Refusal):
                    await self._refuse(request, context)
                yield request

        return gen()

    def _wrap(self, h: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        de = self._deserializer(h.request_deserializer, method)
        se = h.response_serializer
        if h.request_streaming:
            behavior = h.stream_stream if h.response_streaming else h.stream_unary
        else:
            behavior = h.unary_stream if h.response_streaming else h.unary_unary
        streaming_requests = bool(h.request_streaming)

        async def first(request: Any, context: Any) -> Any:
            """The request (or the checked request stream) the behaviour gets; a refusal aborts here."""
            if streaming_requests:
                return self._checked(request, context)
            if isinstance(request, Refusal):
                await self._refuse(request, context)
            return request

        if inspect.isasyncgenfunction(behavior):

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                async for response in behavior(await first(request, context), context):
                    yield response

            wrapped: Callable[..., Any] = streaming
        else:

            async def unary(request: Any, context: Any) -> Any:
                return await behavior(await first(request, context), context)

            wrapped = unary
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(bool(h.request_streaming), bool(h.response_streaming))]
        return kind(wrapped, request_deserializer=de, response_serializer=se)


def refusing_handler(code: str, reason: str, message: str) -> grpc.RpcMethodHandler:
    """A handler for any kind of call that fails at once, without reading (or decoding) the request."""

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await abort(context, code, reason, message)
        yield  # pragma: no cover  (makes this an async generator)

    return grpc.stream_stream_rpc_method_handler(refuse)
