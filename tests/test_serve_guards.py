"""The gRPC service's guards against bad and hostile clients: status codes, auth, TLS, limits,
eviction, pacing, a world gone non-finite (in-process servers on port 0, tiny random-weight worlds)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from worldsim import compliance
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
    WorldNotFound,
)
from worldsim.serve.server import BackgroundServer, ServeConfig
from worldsim.testing import serving, tiny_world
from worldsim.wire._proto import world_pb2 as pb


def test_bad_input_gets_its_status_code_and_the_server_keeps_serving(tiny_world_path: Path) -> None:
    with serving(tiny_world_path, {"box": tiny_world(compliance.spaces()["box"])}, max_message_bytes=4096) as srv:
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
