"""The gRPC service against servers on port 0: sessions, errors, auth, limits, eviction, load."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import numpy as np
import pytest

from worldsim.client import (
    Client,
    EpisodeEnded,
    InvalidAction,
    RemoteWorld,
    ResourceExhausted,
    SessionNotFound,
    Unauthenticated,
    WorldNotFound,
)
from worldsim.serve._proto import world_pb2 as pb
from worldsim.serve.server import ServeConfig, Server
from worldsim.testing import tiny_world


@contextmanager
def serving(**cfg: object) -> Iterator[tuple[str, Server]]:
    """A server on port 0 with a tiny world, in a background event loop."""
    loop = asyncio.new_event_loop()
    box: dict[str, Server] = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        box["s"] = loop.run_until_complete(Server.start({"tiny": tiny_world()}, ServeConfig(port=0, **cfg)))  # type: ignore[arg-type]
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(30)
    server = box["s"]
    try:
        yield f"127.0.0.1:{server.port}", server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0.5), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


def test_whole_session() -> None:
    with serving() as (addr, server):
        worlds = Client(addr).list_worlds()
        assert worlds[0]["name"] == "tiny" and worlds[0]["observation_shape"] == (64, 64, 3)
        env = RemoteWorld(addr, "tiny", seed=0)
        obs, _ = env.reset(seed=3)
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
        for i in range(5):
            obs, r, term, trunc, info = env.step(i % 2)
        assert info["frame_index"] == 5 and isinstance(r, float)
        assert env.info()["frame_index"] == 5
        env.reset()
        assert env.info()["episodes"] == 3  # created, reset(seed=3), reset()
        env.close()
        assert server.service.hosts["tiny"].sessions == {}


def test_png_frames_match_raw() -> None:
    with serving() as (addr, _):
        raw = RemoteWorld(addr, "tiny", seed=0)
        png = RemoteWorld(addr, "tiny", seed=0, encoding="png")
        a, b = raw.reset(seed=1)[0], png.reset(seed=1)[0]
        assert np.array_equal(a, b)
        raw.close(), png.close()


def test_bad_input_status_codes_and_server_keeps_serving() -> None:
    with serving(max_message_bytes=4096) as (addr, _):
        client = Client(addr)
        env = RemoteWorld(addr, "tiny", seed=0, max_episode_steps=2)
        with pytest.raises(InvalidAction, match=r"\[0, 1\]"):
            env.step(5)
        with pytest.raises(InvalidAction, match="does not fit"):
            client.call(
                "Step",
                pb.StepRequest(session_id=env.session_id, action=pb.Action(continuous=pb.FloatArray(values=[0.5]))),
            )
        with pytest.raises(InvalidAction, match="empty"):
            client.call("Step", pb.StepRequest(session_id=env.session_id))
        with pytest.raises(SessionNotFound):
            client.call("Step", pb.StepRequest(session_id="nope", action=pb.Action(discrete=0)))
        with pytest.raises(WorldNotFound):
            RemoteWorld(addr, "no-such-world")
        with pytest.raises(ResourceExhausted):  # oversize message
            client.call(
                "Step",
                pb.StepRequest(
                    session_id=env.session_id, action=pb.Action(continuous=pb.FloatArray(values=[0.0] * 5000))
                ),
            )
        env.step(0)
        *_, trunc, _ = env.step(1)
        assert trunc
        with pytest.raises(EpisodeEnded):
            env.step(0)
        env.reset()
        assert env.step(1)[4]["frame_index"] == 1  # still serving
        env.close()


def test_auth_on_and_off() -> None:
    with serving(token="s3cret") as (addr, _):
        with pytest.raises(Unauthenticated):
            Client(addr).list_worlds()
        with pytest.raises(Unauthenticated):
            Client(addr, token="wrong").list_worlds()
        assert Client(addr, token="s3cret").list_worlds()[0]["name"] == "tiny"
        env = RemoteWorld(addr, "tiny", token="s3cret", seed=0)
        env.step(1)
        env.close()
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(addr))  # health stays open
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
    with serving() as (addr, _):
        assert Client(addr, token="anything").list_worlds()


def test_session_limit_and_slots_freed() -> None:
    with serving(max_sessions=2) as (addr, _):
        a, b = RemoteWorld(addr, "tiny", seed=0), RemoteWorld(addr, "tiny", seed=1)
        with pytest.raises(ResourceExhausted, match="2 sessions"):
            RemoteWorld(addr, "tiny")
        a.step(0)
        a.close()
        c = RemoteWorld(addr, "tiny", seed=2)  # the slot is free again; b kept its row's history
        b.step(1), c.step(0)
        b.close(), c.close()


def test_closing_compacts_rows_without_losing_history() -> None:
    """Closing a session moves the last row into its slot: that session's rollout must go on unchanged."""
    with serving() as (addr, _):
        a, b = RemoteWorld(addr, "tiny", seed=0), RemoteWorld(addr, "tiny", seed=0)
        ref = RemoteWorld(addr, "tiny", seed=0)
        b.reset(seed=9), ref.reset(seed=9)
        for i in range(3):
            b.step(i % 2), ref.step(i % 2)
        a.close()  # b moves from row 1 to row 0
        fb, fr = b.step(1)[0], ref.step(1)[0]
        assert np.abs(fb.astype(int) - fr.astype(int)).max() <= 1
        b.close(), ref.close()


def test_idle_eviction() -> None:
    with serving(idle_timeout=0.4) as (addr, server):
        env = RemoteWorld(addr, "tiny", seed=0)
        env.step(0)
        time.sleep(1.5)
        with pytest.raises(SessionNotFound):
            env.step(0)
        assert server.service.hosts["tiny"].sessions == {}


def test_sixteen_concurrent_streaming_clients() -> None:
    with serving() as (addr, server):

        def play(i: int) -> int:
            env = RemoteWorld(addr, "tiny", seed=i)
            for k in range(8):
                env.step((i + k) % 2)
            env.close()
            return i

        with ThreadPoolExecutor(16) as pool:
            assert sorted(pool.map(play, range(16))) == list(range(16))
        host = server.service.hosts["tiny"]
        assert host.steps == 16 * 8
        assert host.batches < host.steps  # requests were batched


def test_remote_world_passes_env_checker() -> None:
    from gymnasium.utils.env_checker import check_env

    with serving() as (addr, _):
        env = RemoteWorld(addr, "tiny", seed=0)
        check_env(env, skip_render_check=True)
        env.close()


def test_stubs_match_proto() -> None:
    pytest.importorskip("grpc_tools")
    res = subprocess.run([sys.executable, "-m", "worldsim.serve.codegen", "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
