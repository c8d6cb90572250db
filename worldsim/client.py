"""Python client for ``worldsim serve``: a remote world that is itself a ``gym.Env``.

    from worldsim.client import RemoteWorld
    env = RemoteWorld("localhost:50051", "cartpole", seed=0)      # opens a session
    obs, info = env.reset()
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    env.close()                                                     # closes the session

    from worldsim.client import Client
    Client("localhost:50051").list_worlds()                        # [{"name": "cartpole", ...}]

Steps go through the bidirectional ``Play`` stream (one action in, one frame out, no per-call
setup). The gRPC stub stays hidden: server errors arrive as the exceptions below (all
:class:`RemoteError`), never as ``grpc.RpcError``. A step after an error opens a new stream.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import gymnasium as gym
import numpy as np

from worldsim.serve import encoding as enc
from worldsim.serve._proto import world_pb2 as pb
from worldsim.serve._proto import world_pb2_grpc as pb_grpc
from worldsim.serve.auth import REASON_KEY
from worldsim.serve.convert import action_space_from_proto, action_to_proto, context_to_proto
from worldsim.spaces import ActionError, ActionSpec


# ---------------------------------------------------------------------------- errors
class RemoteError(Exception):
    """An error reported by (or while talking to) a worldsim server.

    ``code``: the gRPC status name (``"NOT_FOUND"``); ``reason``: the server's ``ErrorReason`` name.
    """

    def __init__(self, message: str, code: str = "UNKNOWN", reason: str = "") -> None:
        super().__init__(message)
        self.code, self.reason = code, reason


class WorldNotFound(RemoteError, LookupError):
    """The server does not host that world (NOT_FOUND)."""


class SessionNotFound(RemoteError, LookupError):
    """The session was closed or evicted after being idle (NOT_FOUND)."""


class InvalidAction(RemoteError, ActionError):
    """The action does not fit the world's action space (INVALID_ARGUMENT); also a ValueError."""


class InvalidArgument(RemoteError, ValueError):
    """Another malformed request, e.g. context frames of the wrong shape (INVALID_ARGUMENT)."""


class Unauthenticated(RemoteError, PermissionError):
    """Missing or wrong token (UNAUTHENTICATED)."""


class ResourceExhausted(RemoteError):
    """Too many sessions on the world, or a message larger than the server accepts."""


class EpisodeEnded(RemoteError):
    """Stepped after ``terminated`` or ``truncated`` without ``reset()`` (FAILED_PRECONDITION)."""


class Unsupported(RemoteError):
    """The server cannot do that, e.g. JPEG frames without Pillow (UNIMPLEMENTED)."""


class Unavailable(RemoteError, ConnectionError):
    """The server cannot be reached or is shutting down (UNAVAILABLE)."""


class DeadlineExceeded(RemoteError, TimeoutError):
    """The call took longer than the client's timeout."""


_BY_REASON: dict[str, type[RemoteError]] = {
    "ERROR_REASON_WORLD_NOT_FOUND": WorldNotFound,
    "ERROR_REASON_SESSION_NOT_FOUND": SessionNotFound,
    "ERROR_REASON_INVALID_ACTION": InvalidAction,
    "ERROR_REASON_INVALID_ARGUMENT": InvalidArgument,
    "ERROR_REASON_SESSION_LIMIT": ResourceExhausted,
    "ERROR_REASON_EPISODE_ENDED": EpisodeEnded,
    "ERROR_REASON_UNAUTHENTICATED": Unauthenticated,
    "ERROR_REASON_UNSUPPORTED_ENCODING": Unsupported,
}
_BY_CODE: dict[grpc.StatusCode, type[RemoteError]] = {
    grpc.StatusCode.NOT_FOUND: SessionNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: EpisodeEnded,
    grpc.StatusCode.UNIMPLEMENTED: Unsupported,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _convert(e: grpc.RpcError) -> RemoteError:
    """A grpc error -> the matching :class:`RemoteError` (by ErrorReason, else by status code)."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    detail = (e.details() if hasattr(e, "details") else None) or str(e)
    reason = ""
    trailing = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == REASON_KEY:
            reason = value if isinstance(value, str) else value.decode()
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, RemoteError)
    return cls(f"{code.name}: {detail}", code=code.name, reason=reason)


# ---------------------------------------------------------------------------- connection
class Client:
    """A connection to a worldsim server: plaintext, or TLS when ``root_cert`` (PEM) is given."""

    def __init__(
        self,
        address: str,
        token: str | None = None,
        root_cert: str | Path | bytes | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.address = address
        opts = [("grpc.max_receive_message_length", 16 << 20)]
        if root_cert is not None:
            pem = root_cert if isinstance(root_cert, bytes) else Path(root_cert).read_bytes()
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(pem), options=opts)
        else:
            self._channel = grpc.insecure_channel(address, options=opts)
        self._stub = pb_grpc.WorldServiceStub(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """One unary call by name (``"ListWorlds"``, ``"Step"``, ...) with a ``worldsim.v1`` request."""
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise _convert(e) from None

    def play_stream(self, requests: Iterator[pb.StepRequest]) -> Iterator[pb.Frame]:
        """The raw Play stream (frames as ``worldsim.v1.Frame``); errors are raised as RemoteError."""
        responses = self._stub.Play(requests, metadata=self._metadata)
        try:
            yield from responses
        except grpc.RpcError as e:
            raise _convert(e) from None
        finally:
            responses.cancel()

    def list_worlds(self) -> list[dict[str, Any]]:
        """The worlds this server hosts: name, action_space (ActionSpec), observation_shape, fps, ..."""
        return [world_dict(w) for w in self.call("ListWorlds", pb.ListWorldsRequest()).worlds]

    def healthy(self, service: str = "") -> bool:
        """True when the standard health check says SERVING ("" = the whole server)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            resp = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
            )
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def open(self, world: str, **kwargs: Any) -> RemoteWorld:
        """A :class:`RemoteWorld` session on this connection."""
        return RemoteWorld(self, world, **kwargs)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def world_dict(w: pb.WorldInfo) -> dict[str, Any]:
    return {
        "name": w.name,
        "action_space": action_space_from_proto(w.action_space),
        "observation_shape": tuple(w.observation_shape),
        "fps": w.fps,
        "context_frames": w.context_frames,
        "max_sessions": w.max_sessions,
        "active_sessions": w.active_sessions,
    }


class _Stream:
    """One open Play stream: a request queue feeding gRPC's sender thread, and the responses."""

    def __init__(self, client: Client) -> None:
        self.requests: queue.Queue[pb.StepRequest | None] = queue.Queue()
        self.responses = client._stub.Play(iter(self.requests.get, None), metadata=client._metadata)
        # Unblock gRPC's request thread even if the env is dropped without close().
        self._finalizer = weakref.finalize(self, self.requests.put, None)

    def exchange(self, req: pb.StepRequest) -> pb.Frame:
        self.requests.put(req)
        return next(self.responses)

    def close(self) -> None:
        self._finalizer()  # ends the request stream: the server's Play returns
        self.responses.cancel()


# ---------------------------------------------------------------------------- the env
class RemoteWorld(gym.Env):
    """A world served by ``worldsim serve``, as a Gymnasium env with the local env's spaces.

    ``address``: ``"host:port"`` or a :class:`Client`. ``encoding``: ``"raw"`` (default, exact),
    ``"png"`` (exact, smaller) or ``"jpeg"`` (lossy, smallest). ``reset(options={"frames": (K, 64,
    64, 3) uint8, "actions": K actions})`` starts the episode from real context frames.

    ``info`` holds ``frame_index``, as in the local env. Not in ``info``, since Gymnasium wants it
    deterministic: ``last_latency_ms`` (server side), ``last_batch_size`` (sessions the server
    stepped together), ``episode``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        address: str | Client,
        world: str = "cartpole",
        token: str | None = None,
        seed: int | None = None,
        max_episode_steps: int = 0,
        encoding: str = "raw",
        root_cert: str | Path | bytes | None = None,
        render_mode: str | None = "rgb_array",
        timeout: float = 30.0,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if encoding not in enc.NAMES:
            raise ValueError(f"encoding must be one of {sorted(enc.NAMES)}, got {encoding!r}")
        self._own_client = not isinstance(address, Client)
        self.client: Client = address if isinstance(address, Client) else Client(address, token, root_cert, timeout)
        req = pb.CreateSessionRequest(
            world=world,
            options=pb.SessionOptions(max_episode_steps=max_episode_steps, encoding=enc.NAMES[encoding]),  # type: ignore[arg-type]
        )
        if seed is not None:
            req.seed = int(seed)
        try:
            resp = self.client.call("CreateSession", req)
        except RemoteError:
            if self._own_client:
                self.client.close()
            raise
        self.session_id: str = resp.session_id
        self.world_name = world
        self.world_info = world_dict(resp.world)
        self.action_spec: ActionSpec = self.world_info["action_space"]
        self.spec_ = self.action_spec  # name used by worldsim.play
        self.action_space = self.action_spec.to_space()
        self.observation_space = gym.spaces.Box(0, 255, self.world_info["observation_shape"], np.uint8)
        self.metadata = {**type(self).metadata, "render_fps": int(resp.world.fps)}
        self.render_mode = render_mode
        self.last_latency_ms, self.last_batch_size, self.episode = 0.0, 0, 0
        self._frame = self._decode(resp.frame)
        self._stream: _Stream | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _decode(self, f: pb.Frame) -> np.ndarray:
        return enc.decode(f.data, tuple(f.shape), f.encoding)

    # ------------------------------------------------------------------ gym.Env
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """A new episode. The server's row is reseeded from this env's ``np_random``, so episodes
        are reproducible from ``reset(seed=...)``."""
        super().reset(seed=seed)
        req = pb.ResetRequest(session_id=self.session_id, seed=int(self.np_random.integers(2**63 - 1)))
        options = options or {}
        if options.get("frames") is not None:
            req.context.CopyFrom(context_to_proto(options["frames"], options.get("actions"), self.action_spec))
        f = self.client.call("Reset", req)
        self._frame = self._decode(f)
        self.episode = int(f.episode)
        return self._frame.copy(), {"frame_index": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        try:
            msg = pb.StepRequest(session_id=self.session_id, action=action_to_proto(action, self.action_spec))
        except ActionError as e:
            raise InvalidAction(str(e), code="INVALID_ARGUMENT", reason="client side") from None
        with self._lock:
            if self._closed:
                raise SessionNotFound("this RemoteWorld is closed", code="NOT_FOUND")
            if self._stream is None:
                self._stream = _Stream(self.client)
            try:
                f = self._stream.exchange(msg)
            except (grpc.RpcError, StopIteration) as e:
                self._stream.close()  # a failed stream is over; the next step opens a new one
                self._stream = None
                if isinstance(e, StopIteration):
                    raise Unavailable("the server ended the Play stream", code="UNAVAILABLE") from None
                raise _convert(e) from None
        self._frame = self._decode(f)
        self.last_latency_ms, self.last_batch_size = float(f.latency_ms), int(f.batch_size)
        info = {"frame_index": int(f.frame_index)}
        return self._frame.copy(), float(f.reward), bool(f.terminated), bool(f.truncated), info

    def render(self) -> np.ndarray | None:
        """The last frame (64, 64, 3) uint8 with ``render_mode="rgb_array"``."""
        return self._frame.copy() if self.render_mode == "rgb_array" else None

    def session_info(self) -> dict[str, Any]:
        """The server's view of this session: frame_index, episode, idle_seconds, done."""
        s = self.client.call("GetSession", pb.GetSessionRequest(session_id=self.session_id))
        return {"frame_index": s.frame_index, "episode": s.episode, "idle_seconds": s.idle_seconds, "done": s.done}

    def close(self) -> None:
        """Close the session on the server (idempotent; an already-evicted session is fine)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        try:
            self.client.call("CloseSession", pb.CloseSessionRequest(session_id=self.session_id), timeout=5.0)
        except RemoteError:
            pass  # evicted already, or the server is gone
        if self._own_client:
            self.client.close()
        super().close()
