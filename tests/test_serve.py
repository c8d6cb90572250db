"""The gRPC service against in-process servers on port 0 (tiny random-weight worlds)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import gymnasium as gym
import numpy as np
import pytest

from worldsim.client import (
    Client,
    EpisodeEnded,
    InvalidAction,
    InvalidArgument,
    RemoteError,
    RemoteWorld,
    ResourceExhausted,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
    Unsupported,
    WorldNotFound,
)
from worldsim.engine.sampler import SamplerConfig
from worldsim.engine.world import WorldModel
from worldsim.serve.server import BackgroundServer, ServeConfig
from worldsim.testing import tiny_world
from worldsim.wire import encoding as enc
from worldsim.wire._proto import world_pb2 as pb


@contextmanager
def serving(path: Path, extra: dict[str, WorldModel] | None = None, **cfg: object) -> Iterator[BackgroundServer]:
    """The fixture's tiny world (as "tiny") plus ``extra`` worlds, served on 127.0.0.1:0."""
    worlds = {"tiny": WorldModel.load(path, device="cpu"), **(extra or {})}
    with BackgroundServer(worlds, ServeConfig(port=0, **cfg)) as srv:  # type: ignore[arg-type]
        yield srv


def box_world() -> WorldModel:
    return tiny_world(gym.spaces.Box(-1.0, 1.0, (2,), np.float32))


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


def test_bad_input_gets_its_status_code_and_the_server_keeps_serving(tiny_world_path: Path) -> None:
    with serving(tiny_world_path, {"box": box_world()}, max_message_bytes=4096) as srv:
        client = Client(srv.address)
        env = RemoteWorld(srv.address, "tiny", seed=0, max_episode_steps=2)
        box = RemoteWorld(srv.address, "box", seed=0)
        sid = env.session_id

        def step(session: str, **action: Any) -> None:
            client.call("Step", pb.StepRequest(session_id=session, action=pb.Action(**action)))

        errors: list[RemoteError] = []
        cases: list[tuple[Callable[[], object], type[RemoteError], str | None]] = [
            (lambda: env.step(5), InvalidAction, r"\[0, 1\]"),  # out of range, over the Play stream
            (lambda: env.step(1.5), InvalidAction, "integer"),  # a fraction, refused client side as locally
            (lambda: step(sid, continuous=pb.FloatArray(values=[0.5])), InvalidAction, "does not fit"),
            (lambda: step(sid), InvalidAction, "empty"),
            (lambda: box.step([float("nan"), 0.0]), InvalidAction, "NaN"),
            (lambda: box.step([0.5]), InvalidAction, r"expected one action \(shape \(2,\)\)"),
            (lambda: box.step([3.0, 0.0]), InvalidAction, "outside"),
            (lambda: step("no-such-session", discrete=0), SessionNotFound, "unknown session"),
            (lambda: RemoteWorld(srv.address, "no-such-world"), WorldNotFound, "unknown world"),
            (lambda: RemoteWorld(srv.address, "tiny", max_episode_steps=-1), InvalidArgument, "max_episode_steps"),
            (lambda: step(sid, continuous=pb.FloatArray(values=[0.0] * 5000)), ResourceExhausted, None),  # oversize
        ]
        for call, cls, match in cases:
            with pytest.raises(cls, match=match) as e:
                call()
            assert not isinstance(e.value, grpc.RpcError)
            errors.append(e.value)
        assert [e.code for e in errors] == (
            ["INVALID_ARGUMENT"] * 7 + ["NOT_FOUND"] * 2 + ["INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"]
        )
        assert errors[0].reason == "ERROR_REASON_INVALID_ACTION"

        env.step(0)
        *_, trunc, info = env.step(1)
        assert trunc and info["frame_index"] == 2
        with pytest.raises(EpisodeEnded) as ended:  # FAILED_PRECONDITION until reset
            env.step(0)
        assert ended.value.code == "FAILED_PRECONDITION" and env.session_info()["done"]
        env.reset()
        assert env.step(1)[4]["frame_index"] == 1  # the same session goes on, on a new stream
        assert box.step([0.25, -0.5])[4]["frame_index"] == 1
        assert client.healthy()
        env.close()
        box.close()


def test_auth_on_and_off(tiny_world_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with serving(tiny_world_path, token="s3cret") as srv:
        for token in (None, "wrong"):
            with pytest.raises(Unauthenticated) as e:
                Client(srv.address, token=token).list_worlds()
            assert e.value.code == "UNAUTHENTICATED"
        with pytest.raises(Unauthenticated):
            RemoteWorld(srv.address, "tiny")
        assert Client(srv.address, token="s3cret").list_worlds()[0]["name"] == "tiny"
        env = RemoteWorld(srv.address, "tiny", token="s3cret", seed=0)
        env.step(1)
        env.close()
        # Health checks and reflection stay open (probes carry no credentials).
        assert Client(srv.address).healthy()
        stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(srv.address))
        (resp,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in resp.list_services_response.service}
        assert {"worldsim.v1.WorldService", "grpc.health.v1.Health"} <= names
    with serving(tiny_world_path) as srv:  # auth off: any token or none
        assert Client(srv.address, token="anything").list_worlds() and Client(srv.address).list_worlds()


def test_session_limit(tiny_world_path: Path) -> None:
    with serving(tiny_world_path, max_sessions=2) as srv:
        a, b = RemoteWorld(srv.address, "tiny", seed=0), RemoteWorld(srv.address, "tiny", seed=1)
        with pytest.raises(ResourceExhausted, match="maximum of 2") as e:
            RemoteWorld(srv.address, "tiny")
        assert e.value.reason == "ERROR_REASON_SESSION_LIMIT"
        a.step(0)
        a.close()
        c = RemoteWorld(srv.address, "tiny", seed=2)  # the slot is free again
        b.step(1)
        c.step(0)
        b.close()
        c.close()


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


def test_idle_eviction(tiny_world_path: Path) -> None:
    with serving(tiny_world_path, idle_timeout=0.3) as srv:
        env = RemoteWorld(srv.address, "tiny", seed=0)
        busy = RemoteWorld(srv.address, "tiny", seed=1)
        env.step(0)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.9:
            busy.step(1)  # an active session is not evicted
            time.sleep(0.05)
        with pytest.raises(SessionNotFound):
            env.step(0)
        busy.step(0)
        assert srv.server is not None and list(srv.server.hosts["tiny"].sessions) == [busy.session_id]
        busy.close()


def test_rate_limit_paces_a_session(tiny_world_path: Path) -> None:
    with serving(tiny_world_path, rate_limit=20.0) as srv:
        env = RemoteWorld(srv.address, "tiny", seed=0)
        env.step(0)
        t0 = time.perf_counter()
        for _ in range(5):
            env.step(1)
        assert time.perf_counter() - t0 >= 5 / 20 - 0.02
        env.close()


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

    with serving(tiny_world_path, {"box": box_world()}) as srv:
        for name in ("tiny", "box"):
            env = RemoteWorld(srv.address, name, seed=0)
            check_env(env)
            env.close()


def _openssl_cert(tmp: Path) -> tuple[Path, Path]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tiny_world_path: Path, tmp_path: Path) -> None:
    cert, key = _openssl_cert(tmp_path)
    with serving(tiny_world_path, tls_cert=cert, tls_key=key, token="t") as srv:
        env = RemoteWorld(srv.address, "tiny", token="t", root_cert=cert, seed=0)
        assert env.step(1)[4]["frame_index"] == 1
        env.close()
        with pytest.raises(Unavailable):
            Client(srv.address, token="t", timeout=2).list_worlds()  # plaintext against a TLS port


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


def test_per_client_session_cap(tiny_world_path: Path) -> None:
    with serving(tiny_world_path, max_sessions=4, max_sessions_per_client=2) as srv:
        a, b = RemoteWorld(srv.address, "tiny", seed=0), RemoteWorld(srv.address, "tiny", seed=1)
        with pytest.raises(ResourceExhausted, match="--max-sessions-per-client") as e:
            RemoteWorld(srv.address, "tiny")
        assert e.value.reason == "ERROR_REASON_SESSION_LIMIT"
        a.close()  # closing one frees the client's slot
        c = RemoteWorld(srv.address, "tiny", seed=2)
        assert Client(srv.address).list_worlds()[0]["active_sessions"] == 2
        b.close()
        c.close()
        assert srv.server is not None and srv.server.service.held == {}


def test_a_world_with_non_finite_output_is_not_serving(tiny_world_path: Path) -> None:
    import torch

    from worldsim.wire.errors import REASON_KEY

    broken = tiny_world()
    with torch.no_grad():
        for p in broken.denoiser.parameters():
            p.fill_(float("nan"))
    with serving(tiny_world_path, {"broken": broken}) as srv:
        client = Client(srv.address)
        assert client.healthy() and client.healthy("worldsim.v1.WorldService")  # "tiny" still serves
        assert client.healthy("worldsim.v1.WorldService/tiny")
        assert not client.healthy("worldsim.v1.WorldService/broken")
        with pytest.raises(RemoteError, match="failed its health check") as e:
            RemoteWorld(srv.address, "broken")
        assert (e.value.code, e.value.reason) == ("FAILED_PRECONDITION", "ERROR_REASON_WORLD_UNHEALTHY")
        RemoteWorld(srv.address, "tiny", seed=0).close()
    with BackgroundServer({"broken": broken}, ServeConfig(port=0)) as srv:  # nothing healthy: the server is not
        assert not Client(srv.address).healthy()
        channel = grpc.insecure_channel(srv.address)
        with pytest.raises(grpc.RpcError) as raw:
            channel.unary_unary("/worldsim.v1.WorldService/CreateSession")(
                pb.CreateSessionRequest(world="broken").SerializeToString(), timeout=10
            )
        assert dict(raw.value.trailing_metadata())[REASON_KEY] == "ERROR_REASON_WORLD_UNHEALTHY"
        channel.close()


def test_token_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens are compared with hmac.compare_digest on equal-length digests (no length leak)."""
    import hmac

    from worldsim.serve import auth

    seen: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    check = auth.TokenAuthInterceptor("s3cret")
    assert check.authorized([("authorization", "Bearer s3cret")])
    assert check.authorized([("authorization", "BEARER s3cret")])
    assert check.authorized([("authorization", "bearer s3cret")])
    assert not check.authorized([("authorization", "Bearer s3cre")])
    assert not check.authorized([("authorization", "Bearer " + "x" * 1000)])
    assert not check.authorized([("authorization", "Basic s3cret")])
    assert not check.authorized([("authorization", "s3cret")]) and not check.authorized([])
    assert seen and all(n == (32, 32) for n in seen)


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
