"""Python client for ``worldsim serve``: a remote world that is itself a ``gym.Env``.

    from worldsim.client import RemoteWorld
    env = RemoteWorld("localhost:50051", "cartpole", seed=0)
    obs, info = env.reset()
    obs, reward, terminated, truncated, info = env.step(1)

The stub stays hidden; gRPC errors become the Python exceptions below. Steps go through the
bidirectional ``Play`` stream (one action in, one frame out).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import gymnasium as gym
import numpy as np

from worldsim.serve._proto import world_pb2 as pb
from worldsim.serve._proto import world_pb2_grpc as pb_grpc
from worldsim.serve.encoding import decode
from worldsim.spaces import ActionError, ActionSpec


class RemoteError(RuntimeError):
    """Any error from the server."""


class WorldNotFound(RemoteError, KeyError):
    pass


class SessionNotFound(RemoteError, KeyError):
    pass


class InvalidAction(RemoteError, ActionError):
    pass


class Unauthenticated(RemoteError, PermissionError):
    pass


class ResourceExhausted(RemoteError):
    pass


class EpisodeEnded(RemoteError):
    """Stepped after terminated/truncated without reset (FAILED_PRECONDITION)."""


class Unavailable(RemoteError, ConnectionError):
    pass


def _convert(e: grpc.RpcError) -> RemoteError:
    code, detail = e.code(), e.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return (WorldNotFound if "world" in detail else SessionNotFound)(detail)
    mapping = {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidAction,
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
        grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
        grpc.StatusCode.FAILED_PRECONDITION: EpisodeEnded,
        grpc.StatusCode.UNAVAILABLE: Unavailable,
    }
    return mapping.get(code, RemoteError)(f"{code.name}: {detail}")


class Client:
    """A connection to a worldsim server (insecure, or TLS with ``root_cert``)."""

    def __init__(
        self, address: str, token: str | None = None, root_cert: str | Path | None = None, timeout: float = 30.0
    ) -> None:
        if root_cert is not None:
            creds = grpc.ssl_channel_credentials(Path(root_cert).read_bytes())
            self.channel = grpc.secure_channel(address, creds)
        else:
            self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.WorldServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _convert(e) from None

    def list_worlds(self) -> list[dict[str, Any]]:
        resp = self.call("ListWorlds", pb.ListWorldsRequest())
        return [
            {
                "name": w.name,
                "action_space": json.loads(w.action_space_json),
                "observation_shape": tuple(w.observation_shape),
                "fps": w.fps,
                "max_sessions": w.max_sessions,
                "active_sessions": w.active_sessions,
            }
            for w in resp.worlds
        ]

    def close(self) -> None:
        self.channel.close()


def action_to_proto(action: Any, spec: ActionSpec) -> pb.Action:
    a = np.asarray(action)
    if spec.kind == "discrete":
        if a.size != 1:
            raise InvalidAction(f"expected one discrete action, got shape {a.shape}")
        return pb.Action(discrete=int(a.reshape(-1)[0]))
    if spec.kind == "box":
        return pb.Action(continuous=pb.FloatArray(values=a.reshape(-1).astype(float).tolist()))
    return pb.Action(multi=pb.IntArray(values=a.reshape(-1).astype(np.int64).tolist()))


class RemoteWorld(gym.Env):
    """A world served by ``worldsim serve``, as a Gymnasium env (spaces as the local ``WorldEnv``)."""

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        address: str,
        world: str = "cartpole",
        token: str | None = None,
        seed: int | None = None,
        max_episode_steps: int = 0,
        encoding: str = "raw",
        root_cert: str | Path | None = None,
        render_mode: str | None = "rgb_array",
    ) -> None:
        self.client = Client(address, token=token, root_cert=root_cert)
        enc = {"raw": pb.FRAME_ENCODING_RAW, "png": pb.FRAME_ENCODING_PNG, "jpeg": pb.FRAME_ENCODING_JPEG}[encoding]
        req = pb.CreateSessionRequest(world=world, max_episode_steps=max_episode_steps, encoding=enc)
        if seed is not None:
            req.seed = seed
        resp = self.client.call("CreateSession", req)
        self.session_id = resp.session_id
        self.spec_ = ActionSpec.from_json(resp.world.action_space_json)
        self.action_space = self.spec_.to_space()
        shape = tuple(resp.world.observation_shape)
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        self.metadata = {**self.metadata, "render_fps": int(resp.world.fps)}
        self.render_mode = render_mode
        self.world_name = world
        self.last_latency_ms = 0.0
        self._frame = self._decode(resp.frame)
        self._requests: queue.Queue[pb.StepRequest | None] | None = None
        self._responses: Iterator[pb.Frame] | None = None
        self._lock = threading.Lock()

    def _decode(self, f: pb.Frame) -> np.ndarray:
        return decode(f.data, tuple(f.shape), f.encoding)

    def _stream(self) -> tuple[queue.Queue[pb.StepRequest | None], Iterator[pb.Frame]]:
        if self._requests is None:
            q: queue.Queue[pb.StepRequest | None] = queue.Queue()
            self._requests = q
            self._responses = self.client.stub.Play(iter(q.get, None), metadata=self.client.metadata)
        assert self._responses is not None
        return self._requests, self._responses

    def _end_stream(self) -> None:
        if self._requests is not None:
            self._requests.put(None)
        self._requests = self._responses = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        req = pb.ResetRequest(session_id=self.session_id)
        req.seed = int(self.np_random.integers(2**31 - 1))
        self._frame = self._decode(self.client.call("Reset", req))
        return self._frame.copy(), {"frame_index": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        msg = pb.StepRequest(session_id=self.session_id, action=action_to_proto(action, self.spec_))
        with self._lock:
            q, responses = self._stream()
            q.put(msg)
            try:
                f = next(responses)
            except grpc.RpcError as e:
                self._end_stream()  # a failed stream is over; the next step opens a new one
                raise _convert(e) from None
        self._frame = self._decode(f)
        self.last_latency_ms = f.latency_ms
        return (
            self._frame.copy(),
            float(f.reward),
            bool(f.terminated),
            bool(f.truncated),
            {"frame_index": int(f.frame_index)},
        )

    def render(self) -> np.ndarray | None:
        return self._frame.copy() if self.render_mode == "rgb_array" else None

    def info(self) -> dict[str, Any]:
        s = self.client.call("GetSession", pb.GetSessionRequest(session_id=self.session_id))
        return {"frame_index": s.frame_index, "episodes": s.episodes, "idle_seconds": s.idle_seconds, "done": s.done}

    def close(self) -> None:
        self._end_stream()
        try:
            self.client.call("CloseSession", pb.CloseSessionRequest(session_id=self.session_id))
        except RemoteError:
            pass  # already evicted / server gone
        self.client.close()
