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
from pathlib import Path
from typing import Any

import grpc
import gymnasium as gym
import numpy as np

from worldsim.episodes import default_max_episode_steps, engine_seed
from worldsim.spaces import ActionError, ActionSpec
from worldsim.wire import encoding as enc
from worldsim.wire._proto import world_pb2 as pb
from worldsim.wire._proto import world_pb2_grpc as pb_grpc
from worldsim.wire.convert import action_space_from_proto, action_to_proto, context_to_proto
from worldsim.wire.errors import (
    DeadlineExceeded,
    EpisodeEnded,
    InvalidAction,
    InvalidArgument,
    RemoteError,
    ResourceExhausted,
    SessionNotFound,
    StepInFlight,
    Unauthenticated,
    Unavailable,
    Unsupported,
    WorldNotFound,
    from_rpc_error,
)


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
            raise from_rpc_error(e) from None

    def play(self) -> PlayStream:
        """Open a bidirectional ``Play`` stream: one ``StepRequest`` in, one ``Frame`` out."""
        return PlayStream(self._stub, self._metadata)

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


class PlayStream:
    """One open ``Play`` stream (:meth:`Client.play`): a request queue feeding gRPC's sender thread,
    and the responses. :meth:`exchange` raises :class:`RemoteError`; after an error the stream is over."""

    def __init__(self, stub: pb_grpc.WorldServiceStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self.requests: queue.Queue[pb.StepRequest | None] = queue.Queue()
        self.responses = stub.Play(iter(self.requests.get, None), metadata=metadata)
        # Unblock gRPC's request thread even if the stream is dropped without close().
        self._finalizer = weakref.finalize(self, self.requests.put, None)

    def exchange(self, req: pb.StepRequest) -> pb.Frame:
        """Send one step, wait for its frame."""
        self.requests.put(req)
        try:
            return next(self.responses)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        except StopIteration:
            raise Unavailable("the server ended the Play stream") from None

    def close(self) -> None:
        self._finalizer()  # ends the request stream: the server's Play returns
        self.responses.cancel()


# ---------------------------------------------------------------------------- the env
class RemoteWorld(gym.Env):
    """A world served by ``worldsim serve``, as a Gymnasium env with the local env's spaces.

    ``address``: ``"host:port"`` or a :class:`Client`; ``world``: the served name (None: the
    server's only world; a trained world is served under the name it was trained as). ``encoding``: ``"raw"`` (default, exact),
    ``"png"`` (exact, smaller) or ``"jpeg"`` (lossy, smallest). ``reset(options={"frames": (K, 64,
    64, 3) uint8, "actions": K actions})`` starts the episode from real context frames.

    The episode rules are the local env's (:mod:`worldsim.episodes`): ``seed`` (here or in
    ``reset``) gives the first frame ``WorldEnv.reset(seed=...)`` gives; ``max_episode_steps=None``
    is the world's default limit (a bundled world's, else 1000), 0 none; actions are checked here
    with :func:`~worldsim.episodes.validate_action` (the same decision and message as the local
    env) before they are sent, and the server checks them again.

    ``info`` holds ``frame_index``, as in the local env. Not in ``info``, since Gymnasium wants it
    deterministic: ``last_latency_ms`` (server side), ``last_batch_size`` (sessions the server
    stepped together), ``episode``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        address: str | Client,
        world: str | None = None,
        token: str | None = None,
        seed: int | None = None,
        max_episode_steps: int | None = None,
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
        if world is None:
            world = self._only_world()
        limit = default_max_episode_steps(world) if max_episode_steps is None else int(max_episode_steps)
        req = pb.CreateSessionRequest(
            world=world,
            options=pb.SessionOptions(max_episode_steps=limit, encoding=enc.NAMES[encoding]),  # type: ignore[arg-type]
        )
        if seed is not None:  # the first episode is the one reset(seed=seed) would start
            super().reset(seed=int(seed))
            req.seed = engine_seed(self.np_random)
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
        self.action_space = self.action_spec.to_space()
        self.observation_space = gym.spaces.Box(0, 255, self.world_info["observation_shape"], np.uint8)
        self.metadata = {**type(self).metadata, "render_fps": int(resp.world.fps)}
        self.render_mode = render_mode
        self.last_latency_ms, self.last_batch_size, self.episode = 0.0, 0, 0
        self._frame = self._decode(resp.frame)
        self._stream: PlayStream | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _only_world(self) -> str:
        """The server's world when it serves exactly one (``world=None``); else ValueError naming them."""
        try:
            names = [str(w["name"]) for w in self.client.list_worlds()]
        except RemoteError:
            if self._own_client:
                self.client.close()
            raise
        if len(names) != 1:
            if self._own_client:
                self.client.close()
            raise ValueError(f"the server serves {len(names)} worlds ({', '.join(names)}): name one")
        return names[0]

    def _decode(self, f: pb.Frame) -> np.ndarray:
        return enc.decode(f.data, tuple(f.shape), f.encoding)

    # ------------------------------------------------------------------ gym.Env
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """A new episode. The server's row is reseeded from this env's ``np_random``, so episodes
        are reproducible from ``reset(seed=...)``."""
        super().reset(seed=seed)
        req = pb.ResetRequest(session_id=self.session_id, seed=engine_seed(self.np_random))
        options = options or {}
        if options.get("frames") is not None:
            try:
                ctx = context_to_proto(options["frames"], options.get("actions"), self.action_spec)
            except ActionError as e:
                raise InvalidAction(f"context actions: {e}") from None
            req.context.CopyFrom(ctx)
        f = self.client.call("Reset", req)
        self._frame = self._decode(f)
        self.episode = int(f.episode)
        return self._frame.copy(), {"frame_index": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        try:  # refused here as the server would refuse it, with the local env's message
            msg = pb.StepRequest(session_id=self.session_id, action=action_to_proto(action, self.action_spec))
        except ActionError as e:
            raise InvalidAction(str(e)) from None
        with self._lock:
            if self._closed:
                raise SessionNotFound("this RemoteWorld is closed")
            if self._stream is None:
                self._stream = self.client.play()
            try:
                f = self._stream.exchange(msg)
            except RemoteError:
                self._stream.close()  # a failed stream is over; the next step opens a new one
                self._stream = None
                raise
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


__all__ = [
    "Client",
    "PlayStream",
    "RemoteWorld",
    "world_dict",
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
]
