"""The gRPC service against in-process servers on port 0 (tiny random-weight worlds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import gymnasium as gym
import numpy as np
import pytest

from worldsim import compliance
from worldsim.client import (
    Client,
    InvalidAction,
    InvalidArgument,
    RemoteWorld,
    SessionNotFound,
    Unsupported,
)
from worldsim.engine.sampler import SamplerConfig
from worldsim.testing import serving, tiny_world
from worldsim.wire import encoding as enc
from worldsim.wire._proto import world_pb2 as pb


def test_whole_session(tiny_world_path: Path) -> None:
    with serving(tiny_world_path) as srv:
        client = Client(srv.address)
        (w,) = client.list_worlds()
        assert (w["name"], w["observation_shape"], w["fps"], w["context_frames"]) == ("tiny", (64, 64, 3), 15, 2)
        assert w["action_space"].kind == "discrete" and w["action_space"].n == 2
        assert client.healthy() and client.healthy("worldsim.v1.WorldService")

        env = RemoteWorld(srv.address, "tiny", seed=0)
        assert env.action_space == gym.spaces.Discrete(2) and w["active_sessions"] == 0
        obs, info = env.reset(seed=3)
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and info == {"frame_index": 0} and env.episode == 1
        for i in range(10):  # the Play stream
            obs, r, term, trunc, info = env.step(i % 2)
        assert isinstance(r, float) and not term and not trunc
        assert info == {"frame_index": 10} and env.last_batch_size == 1 and env.last_latency_ms > 0
        frame = env.render()
        assert frame is not None and np.array_equal(frame, obs)
        assert env.session_info()["frame_index"] == 10

        frame = client.call("Step", pb.StepRequest(session_id=env.session_id, action=pb.Action(discrete=1)))
        assert frame.frame_index == 11 and frame.encoding == pb.FRAME_ENCODING_RAW and tuple(frame.shape) == (64, 64, 3)
        assert client.list_worlds()[0]["active_sessions"] == 1

        env.reset()
        assert env.session_info() == {
            "frame_index": 0,
            "episode": 2,
            "idle_seconds": pytest.approx(0, abs=1),
            "done": False,
        }
        sid = env.session_id
        env.close()
        env.close()  # idempotent
        assert srv.server is not None and srv.server.hosts["tiny"].sessions == {}
        with pytest.raises(SessionNotFound):
            client.call("GetSession", pb.GetSessionRequest(session_id=sid))
        client.close()


def test_same_seed_same_rollout_and_encodings(tiny_world_path: Path) -> None:
    with serving(tiny_world_path) as srv:
        raw = RemoteWorld(srv.address, "tiny")
        png = RemoteWorld(srv.address, "tiny", encoding="png")
        for env in (raw, png):
            env.reset(seed=1)
        for a in (0, 1, 1):
            assert np.array_equal(raw.step(a)[0], png.step(a)[0])  # PNG is lossless
        if enc.available(enc.JPEG):
            jpg = RemoteWorld(srv.address, "tiny", encoding="jpeg")
            exact, lossy = raw.reset(seed=2)[0], jpg.reset(seed=2)[0]
            assert np.abs(exact.astype(int) - lossy.astype(int)).mean() < 8
            jpg.close()
        else:
            with pytest.raises(Unsupported):
                RemoteWorld(srv.address, "tiny", encoding="jpeg")
        raw.close()
        png.close()


def test_context_frames(tiny_world_path: Path) -> None:
    rng = np.random.default_rng(0)
    ctx = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with serving(tiny_world_path) as srv:
        env = RemoteWorld(srv.address, "tiny", seed=0)
        obs, _ = env.reset(seed=0, options={"frames": ctx, "actions": [0, 1]})
        assert np.array_equal(obs, ctx[-1])
        assert env.step(1)[4]["frame_index"] == 1
        req = pb.CreateSessionRequest(world="tiny", context=pb.Context(frames=ctx.tobytes(), shape=[2, 64, 64, 3]))
        resp = env.client.call("CreateSession", req)
        assert np.array_equal(np.frombuffer(resp.frame.data, np.uint8).reshape(64, 64, 3), ctx[-1])
        with pytest.raises(InvalidArgument, match="shape"):
            env.reset(options={"frames": ctx[:1]})
        with pytest.raises(InvalidArgument, match="2 actions"):
            env.reset(options={"frames": ctx, "actions": [0]})
        with pytest.raises(InvalidAction):
            env.reset(options={"frames": ctx, "actions": [0, 7]})
        env.close()


def test_a_row_never_advances_without_its_clients_action(tiny_world_path: Path) -> None:
    """Other sessions stepping, and closing (which moves rows), leave a session's rollout unchanged."""
    with serving(tiny_world_path) as srv:
        a, b = RemoteWorld(srv.address, "tiny", seed=0), RemoteWorld(srv.address, "tiny", seed=0)
        with serving(tiny_world_path) as alone:
            ref = RemoteWorld(alone.address, "tiny", seed=0)  # the same rollout on a server of its own
            b.reset(seed=9), ref.reset(seed=9)
            for i in range(4):
                a.step(i % 2)
            assert b.session_info()["frame_index"] == 0
            for i in range(2):
                assert np.abs(b.step(i % 2)[0].astype(int) - ref.step(i % 2)[0].astype(int)).max() <= 1
            a.close()  # b moves from row 1 to row 0
            for i in range(3):
                fb, fr = b.step(i % 2)[0], ref.step(i % 2)[0]
                assert np.abs(fb.astype(int) - fr.astype(int)).max() <= 1
            ref.close()
        b.close()


def test_guided_world_is_served_like_any_other(tiny_world_path: Path) -> None:
    """Guided sessions share the world's one engine; stepping others and closing (a row move) leave them unchanged."""
    guided = tiny_world(sampler=SamplerConfig(guidance_scale=2.0))
    with serving(tiny_world_path, {"guided": guided}) as srv, serving(tiny_world_path, {"guided": guided}) as alone:
        assert (
            srv.server is not None and srv.server.hosts["guided"].engine.batch == srv.server.hosts["tiny"].engine.batch
        )
        a, b = RemoteWorld(srv.address, "guided", seed=0), RemoteWorld(srv.address, "guided", seed=1)
        ref = RemoteWorld(alone.address, "guided", seed=1)  # b's rollout on a server of its own
        for env, action in ((a, 0), (a, 1), (b, 1), (ref, 1)):
            env.step(action)
        a.close()  # b moves from row 1 to row 0
        out, want = b.step(0), ref.step(0)
        assert out[4]["frame_index"] == 2
        assert np.abs(out[0].astype(int) - want[0].astype(int)).max() <= 1
        b.close(), ref.close()


def test_sixteen_concurrent_streaming_clients(tiny_world_path: Path) -> None:
    n, steps = 16, 10
    with serving(tiny_world_path, window_ms=5.0) as srv:
        start = threading.Barrier(n)

        def play(i: int) -> list[int]:
            env = RemoteWorld(srv.address, "tiny", seed=i)
            start.wait(30)
            sizes = []
            for k in range(steps):
                env.step((i + k) % 2)
                sizes.append(env.last_batch_size)
            assert env.session_info()["frame_index"] == steps
            env.close()
            return sizes

        with ThreadPoolExecutor(n) as pool:
            sizes = [s for r in pool.map(play, range(n)) for s in r]
        assert srv.server is not None
        host = srv.server.hosts["tiny"]
        assert host.steps == n * steps and host.sessions == {}
        assert host.batches < host.steps and max(sizes) > 1  # sessions were stepped together


@pytest.mark.filterwarnings("ignore:.*alternative render modes")
def test_remote_world_passes_env_checker(tiny_world_path: Path) -> None:
    from gymnasium.utils.env_checker import check_env

    with serving(tiny_world_path, {"box": tiny_world(compliance.spaces()["box"])}) as srv:
        for name in ("tiny", "box"):
            env = RemoteWorld(srv.address, name, seed=0)
            check_env(env)
            env.close()


def test_cli_serve_and_sigterm(tiny_world_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldsim.cli", "serve", str(tiny_world_path), "--port", "0", "--grace", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        info = json.loads(line)
        assert info["worlds"] == ["tiny"]
        client = Client(f"127.0.0.1:{info['port']}")
        env = client.open("tiny", seed=0)
        env.step(0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stderr is not None and "serving tiny on 127.0.0.1:" in proc.stderr.read()
        assert not client.healthy()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bench_grpc_smoke() -> None:
    from worldsim.serve.bench import bench_grpc

    world = tiny_world()
    res = bench_grpc(world, clients=(1, 4), frames=12, warmup=1, rounds=2)  # clients in a process of their own
    for n in (1, 4):
        r = res[f"clients_{n}"]
        assert r["grpc"]["frames_per_s"] > 0 and r["in_process"]["p50_ms"] > 0 and r["grpc"]["mean_batch"] >= 1
        assert len(r["round_ratios"]) == 2 and r["client_process"]
    threads = bench_grpc(world, clients=(2,), frames=8, warmup=1, rounds=1, client_process=False)["clients_2"]
    assert threads["grpc"]["frames_per_s"] > 0 and not threads["client_process"]


def test_stubs_match_proto() -> None:
    pytest.importorskip("grpc_tools")
    from worldsim.wire.codegen import stale_stubs

    assert stale_stubs() == [], "run python -m worldsim.wire.codegen"


def test_reflection_v1_and_v1alpha_list_the_service(tiny_world_path: Path) -> None:
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    with serving(tiny_world_path, token="t") as srv:  # reflection stays open with auth on
        channel = grpc.insecure_channel(srv.address)
        for version in ("v1", "v1alpha"):
            info = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            own = f"grpc.reflection.{version}.ServerReflection"
            requests = [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="worldsim.v1.WorldService"),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=own),
            ]
            listed, described, itself = list(info(iter(requests), timeout=10))
            names = {s.name for s in listed.list_services_response.service}
            assert {"worldsim.v1.WorldService", "grpc.health.v1.Health", own} <= names

            def files(resp: Any) -> list[Any]:
                raw = resp.file_descriptor_response.file_descriptor_proto
                return [descriptor_pb2.FileDescriptorProto.FromString(b) for b in raw]

            assert any(f.package == "worldsim.v1" and f.service[0].name == "WorldService" for f in files(described))
            assert [f.package for f in files(itself)] == [f"grpc.reflection.{version}"], version
        channel.close()


def test_every_served_world_runs_on_the_one_torch_thread() -> None:
    """All torch work of a server on one thread: a second OpenMP team halves both (worldsim.threads)."""
    import threading

    from worldsim.serve.sessions import WorldHost
    from worldsim.testing import tiny_world
    from worldsim.threads import on_torch_thread, torch_thread

    def where() -> str:
        return threading.current_thread().name

    assert on_torch_thread(where).startswith("worldsim-torch")
    assert on_torch_thread(on_torch_thread, where).startswith("worldsim-torch")  # nested: no deadlock
    a, b = WorldHost("a", tiny_world(), max_sessions=2), WorldHost("b", tiny_world(), max_sessions=2)
    assert a.executor is b.executor is torch_thread()
