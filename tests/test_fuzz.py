"""Hostile clients: a bounded fuzz of every method, overlong ids, auth before anything else.

One loopback server on port 0 (a tiny world, a token), raw calls that bypass the client library
(``channel.unary_unary(path)`` with no serialisers: bytes in, bytes out), a fixed seed, a few
seconds. Every refusal must be a documented status with its ``worldsim-error-reason`` trailer
and a short message; the server must stay healthy, serve a correct session afterwards, and log
no traceback.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from worldsim.client import RemoteWorld
from worldsim.engine.world import WorldModel
from worldsim.serve.server import BackgroundServer, ServeConfig
from worldsim.wire._proto import world_pb2 as pb
from worldsim.wire.errors import REASON_KEY

SERVICE = "worldsim.v1.WorldService"
TOKEN = "fuzz-token"
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}
REASONS = set(pb.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
METHODS = {m.name: m for m in pb.DESCRIPTOR.services_by_name["WorldService"].methods}
MAX_BYTES = 16 << 10  # the server's --max-message-bytes here: oversize requests stay cheap


@pytest.fixture(scope="module")
def server(tiny_world_path: Path) -> Iterator[BackgroundServer]:
    world = WorldModel.load(tiny_world_path, device="cpu")
    cfg = ServeConfig(port=0, token=TOKEN, max_sessions=4, max_message_bytes=MAX_BYTES, idle_timeout=0)
    with BackgroundServer({"tiny": world}, cfg) as srv:
        yield srv


def _auth(kind: str) -> list[tuple[str, str]]:
    return {
        "good": [("authorization", f"Bearer {TOKEN}")],
        "lower": [("authorization", f"bearer {TOKEN}")],
        "wrong": [("authorization", "Bearer nope")],
        "none": [],
    }[kind]


def call_raw(
    channel: grpc.Channel, method: str, body: bytes, metadata: list[tuple[str, str]], created: list[str] | None = None
) -> Any:
    """One raw call; returns None on success, else the grpc.RpcError. Opened sessions go to ``created``."""
    path = method if method.startswith("/") else f"/{SERVICE}/{method}"
    try:
        if method == "Play":
            for _ in channel.stream_stream(path)(iter([body, body]), metadata=metadata, timeout=10):
                pass
        else:
            out = channel.unary_unary(path)(body, metadata=metadata, timeout=10)
            if method == "CreateSession" and created is not None:
                created.append(pb.CreateSessionResponse.FromString(out).session_id)
    except grpc.RpcError as e:
        return e
    return None


def check_refusal(e: grpc.RpcError, where: str) -> str:
    """A documented status, its reason trailer, a message under 1 KB and a small trailer; the reason."""
    assert e.code() in DOCUMENTED, (where, e.code(), e.details())
    details = e.details() or ""
    assert len(details.encode()) < 1024, (where, len(details))
    trailer = dict(e.trailing_metadata() or ())
    assert trailer.get(REASON_KEY) in REASONS, (where, e.code(), details, trailer)
    assert sum(len(k) + len(str(v)) for k, v in trailer.items()) < 1024, where
    return str(trailer[REASON_KEY])


# ---------------------------------------------------------------------------- random requests
def _text(rng: random.Random) -> str:
    choice = rng.random()
    if choice < 0.2:
        return rng.choice(["", "tiny", "\x00", "'\"\n\r\\", "\u202e\u0000\ud7ff", "é" * 30])
    if choice < 0.35:
        return "x" * rng.choice([17_000, 70_000, 100_000])  # overlong ids / world names
    return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 40)))


def _action(rng: random.Random) -> pb.Action:
    kind = rng.randrange(4)
    if kind == 0:
        return pb.Action(discrete=rng.choice([0, 1, -1, 2, 2**63 - 1, -(2**63)]))
    values = [rng.choice([0, 1, -5, 2**40]) for _ in range(rng.choice([0, 1, 2, 5000]))]
    if kind == 1:
        return pb.Action(multi=pb.IntArray(values=values))
    if kind == 2:
        floats = [rng.choice([0.5, float("nan"), float("inf"), -1e30]) for _ in range(rng.choice([0, 1, 2, 3000]))]
        return pb.Action(continuous=pb.FloatArray(values=floats))
    return pb.Action()


def _context(rng: random.Random) -> pb.Context:
    shape = rng.choice([[], [2, 64, 64, 3], [1, 64, 64, 3], [2, 64, 64], [-1, 2**31 - 1], [2] * 2000])
    frames = bytes(rng.randrange(256) for _ in range(rng.choice([0, 5, 100]))) if rng.random() < 0.8 else b""
    if rng.random() < 0.2 and shape == [2, 64, 64, 3]:
        frames = bytes(2 * 64 * 64 * 3)  # the right size: a valid context
    return pb.Context(frames=frames, shape=shape, actions=[_action(rng) for _ in range(rng.choice([0, 1, 2, 3]))])


def valid_wire(method: str, rng: random.Random, sessions: list[str]) -> bytes:
    """A well-formed request message for ``method`` with random (mostly wrong) field values."""
    sid = rng.choice(sessions) if sessions and rng.random() < 0.3 else _text(rng)
    seed = rng.choice([None, 0, -1, 2**63 - 1, -(2**63)])
    if method == "CreateSession":
        opts = pb.SessionOptions(
            max_episode_steps=rng.choice([0, 3, -1, 2**31 - 1]),
            encoding=rng.choice([0, 1, 2, 3, 99]),  # type: ignore[arg-type]
            jpeg_quality=rng.choice([0, 50, 96, -3]),
        )
        world = "tiny" if rng.random() < 0.4 else _text(rng)
        msg: Any = pb.CreateSessionRequest(world=world, seed=seed, options=opts)
        if rng.random() < 0.4:
            msg.context.CopyFrom(_context(rng))
    elif method in ("Step", "Play"):
        msg = pb.StepRequest(session_id=sid, action=_action(rng))
    elif method == "Reset":
        msg = pb.ResetRequest(session_id=sid, seed=seed)
        if rng.random() < 0.5:
            msg.context.CopyFrom(_context(rng))
    elif method == "GetSession":
        msg = pb.GetSessionRequest(session_id=sid)
    elif method == "CloseSession":
        msg = pb.CloseSessionRequest(session_id=sid)
    else:
        msg = pb.ListWorldsRequest()
    return bytes(msg.SerializeToString())


def random_body(method: str, rng: random.Random, sessions: list[str]) -> tuple[str, bytes]:
    r = rng.random()
    if r < 0.3:
        return "random bytes", bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    if r < 0.4:
        return "oversize", bytes([0x0A]) + bytes(rng.randrange(MAX_BYTES + 1, 3 * MAX_BYTES))
    if r < 0.45:
        return "truncated", valid_wire(method, rng, sessions)[: rng.randrange(1, 8)] + b"\xff"
    return "valid wire", valid_wire(method, rng, sessions)


def _rollout(address: str, seed: int) -> np.ndarray:
    env = RemoteWorld(address, "tiny", token=TOKEN, seed=seed)
    frames = [env.reset(seed=seed)[0]]
    frames += [env.step(i % 2)[0] for i in range(4)]
    env.close()
    return np.stack(frames)


# ---------------------------------------------------------------------------- the tests
def test_fuzz_every_method(server: BackgroundServer, caplog: pytest.LogCaptureFixture) -> None:
    before = _rollout(server.address, seed=7)
    rng = random.Random(16)
    channel = grpc.insecure_channel(server.address)
    good = _auth("good")
    created = pb.CreateSessionResponse.FromString(
        channel.unary_unary(f"/{SERVICE}/CreateSession")(
            pb.CreateSessionRequest(world="tiny", seed=1).SerializeToString(), metadata=good, timeout=10
        )
    )
    sessions = [created.session_id]  # valid ids the fuzz mixes in; it opens more (closed at the end)
    others = ["/grpc.health.v1.Health/Check", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"]
    seen: dict[str, int] = {}
    n, t_end = 0, time.monotonic() + 6.0
    with caplog.at_level(logging.INFO):
        while n < 1000 and time.monotonic() < t_end:
            method = rng.choice([*METHODS, *others, "/worldsim.v1.WorldService/NoSuchMethod"])
            what, body = random_body(method if method in METHODS else "ListWorlds", rng, sessions)
            auth = rng.choice(["good", "good", "lower", "wrong", "none"])
            e = call_raw(channel, method, body, _auth(auth), sessions)
            n += 1
            if e is None:
                continue
            where = f"#{n} {method} {what} auth={auth}"
            if method in others and e.code() == grpc.StatusCode.NOT_FOUND:
                continue  # the standard health service's own answer for an unknown service name
            if method in others and e.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise AssertionError(f"{where}: health and reflection need no token")
            reason = check_refusal(e, where)
            seen[reason] = seen.get(reason, 0) + 1
            if auth in ("wrong", "none") and method not in others:
                assert reason == "ERROR_REASON_UNAUTHENTICATED", where  # before decoding or any lookup
    assert n >= 100, n  # the fuzz did run (bounded by count and time)
    for reason in (
        "ERROR_REASON_UNAUTHENTICATED",
        "ERROR_REASON_MALFORMED_REQUEST",
        "ERROR_REASON_MESSAGE_TOO_LARGE",
        "ERROR_REASON_SESSION_NOT_FOUND",
        "ERROR_REASON_UNKNOWN_METHOD",
    ):
        assert seen.get(reason, 0) > 0, (reason, seen)

    # Still healthy, and a fresh session replays exactly as before the fuzz.
    for sid in sessions:
        call_raw(channel, "CloseSession", pb.CloseSessionRequest(session_id=sid).SerializeToString(), good)
    health = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b,
    )
    from grpc_health.v1 import health_pb2

    status = health_pb2.HealthCheckResponse.FromString(health(health_pb2.HealthCheckRequest(service=""), timeout=10))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert np.array_equal(_rollout(server.address, seed=7), before)
    channel.close()

    records = caplog.records
    assert not [r for r in records if r.exc_info or "Traceback" in r.getMessage()], "a traceback was logged"
    assert not [r for r in records if r.levelno >= logging.ERROR], [r.getMessage() for r in records][:5]
    malformed = [r for r in records if "is not a valid" in r.getMessage()]
    assert 1 <= len(malformed) <= 10  # logged, at warning level, rate-limited per client
    assert all(r.levelno == logging.WARNING for r in malformed)


def test_overlong_ids_get_short_messages_and_trailers(tiny_world_path: Path) -> None:
    """A 100,000-character id in every method that takes one: its own status, a bounded message and trailer."""
    long_id = "é" + "x" * 100_000
    world = WorldModel.load(tiny_world_path, device="cpu")
    with BackgroundServer({"tiny": world}, ServeConfig(port=0, max_sessions=2)) as srv:  # the default 1 MiB limit
        _overlong_ids(srv, long_id)


def _overlong_ids(server: BackgroundServer, long_id: str) -> None:
    channel = grpc.insecure_channel(server.address)
    good: list[tuple[str, str]] = []
    cases = {
        "GetSession": pb.GetSessionRequest(session_id=long_id),
        "Reset": pb.ResetRequest(session_id=long_id),
        "Step": pb.StepRequest(session_id=long_id, action=pb.Action(discrete=0)),
        "Play": pb.StepRequest(session_id=long_id, action=pb.Action(discrete=0)),
        "CloseSession": pb.CloseSessionRequest(session_id=long_id),
        "CreateSession": pb.CreateSessionRequest(world=long_id),
    }
    for method, msg in cases.items():
        e = call_raw(channel, method, msg.SerializeToString(), good)
        assert e is not None, method
        reason = check_refusal(e, method)
        want = "ERROR_REASON_WORLD_NOT_FOUND" if method == "CreateSession" else "ERROR_REASON_SESSION_NOT_FOUND"
        assert (e.code(), reason) == (grpc.StatusCode.NOT_FOUND, want), (method, e.code(), e.details())
        details = e.details()
        assert len(details.encode()) <= 512 and "100001 characters" in details, (method, details)
        assert len(dict(e.trailing_metadata())[REASON_KEY]) < 64
    # Over the size limit: RESOURCE_EXHAUSTED, now with its trailer and a short message.
    big = pb.StepRequest(session_id="y" * (2 << 20)).SerializeToString()
    e = call_raw(channel, "Step", big, good)
    assert e is not None and check_refusal(e, "oversize") == "ERROR_REASON_MESSAGE_TOO_LARGE"
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-message-bytes" in e.details()
    channel.close()


def test_auth_runs_before_decoding_and_lookup(server: BackgroundServer) -> None:
    channel = grpc.insecure_channel(server.address)
    garbage = b"\xff\xff\xff\x07garbage"
    for auth in ("none", "wrong"):
        for method in ("Step", "CreateSession", "/worldsim.v1.WorldService/Nope", "/other.Service/X"):
            e = call_raw(channel, method, garbage, _auth(auth))
            assert e is not None and e.code() == grpc.StatusCode.UNAUTHENTICATED, (auth, method)
            assert check_refusal(e, method) == "ERROR_REASON_UNAUTHENTICATED"
    for auth in ("good", "lower"):  # the scheme is case-insensitive
        e = call_raw(channel, "Step", garbage, _auth(auth))
        assert e is not None and e.code() == grpc.StatusCode.INVALID_ARGUMENT, auth
        assert check_refusal(e, "garbage") == "ERROR_REASON_MALFORMED_REQUEST"
        assert "worldsim.v1.StepRequest" in e.details()
        e = call_raw(channel, "/worldsim.v1.WorldService/Nope", b"", _auth(auth))
        assert e is not None and e.code() == grpc.StatusCode.UNIMPLEMENTED
        assert check_refusal(e, "unknown method") == "ERROR_REASON_UNKNOWN_METHOD"
    assert call_raw(channel, "ListWorlds", b"", _auth("lower")) is None
    channel.close()
