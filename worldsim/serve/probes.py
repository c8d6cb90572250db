"""Health checking and server reflection: what load balancers, orchestrators and tools probe.

- Health (``grpc.health.v1``): ``""`` and ``worldsim.v1.WorldService`` are SERVING while at
  least one world is healthy; each world also has its own entry,
  ``worldsim.v1.WorldService/<world>``. A world is probed once at start (:func:`probe_world`: one
  reset and one step of a batch-1 session, whose outputs must be finite); a world that fails is
  NOT_SERVING and refuses new sessions, instead of failing every step later. On shutdown every
  entry turns NOT_SERVING.
- Reflection: both ``grpc.reflection.v1`` (what current grpcurl and other tools ask for first)
  and ``grpc.reflection.v1alpha``. grpcio-reflection ships only v1alpha; v1 is the same protocol
  under another package name, so the same servicer is served under both names, with a v1
  descriptor derived from the v1alpha one for tools that describe the reflection service itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2

from worldsim.engine.world import WorldModel

log = logging.getLogger(__name__)
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = reflection.SERVICE_NAME


def world_health_name(service: str, world: str) -> str:
    return f"{service}/{world}"


# ---------------------------------------------------------------------------- world probe
def probe_world(world: WorldModel) -> str | None:
    """One reset and one step of a batch-1 session; None if finite, else what went wrong."""
    try:
        sess = world.session(batch=1, seed=0, cuda_graphs=False)
        sess.reset()
        spec = world.action_spec
        space = spec.to_space()
        space.seed(0)
        res = sess.step(spec.validate([space.sample()]))
    except (FloatingPointError, RuntimeError, ValueError) as e:
        return f"its first step failed: {type(e).__name__}: {e}"
    if not np.all(np.isfinite(res.rewards)):
        return "its first step produced a non-finite reward"
    return None


class Health:
    """The health servicer plus the per-world entries."""

    def __init__(self, server: grpc.aio.Server, service: str) -> None:
        self.servicer = health.aio.HealthServicer()
        self.service = service
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def publish(self, unhealthy: dict[str, str], worlds: Iterable[str]) -> None:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        names = list(worlds)
        for name in names:
            ok = name not in unhealthy
            if not ok:
                log.error("world %s is NOT_SERVING: %s", name, unhealthy[name])
            await self.servicer.set(world_health_name(self.service, name), serving if ok else not_serving)
        overall = serving if any(n not in unhealthy for n in names) else not_serving
        for name in ("", self.service):
            await self.servicer.set(name, overall)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()


# ---------------------------------------------------------------------------- reflection
def _v1_descriptor() -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` to the default pool (v1alpha under the v1 name)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return
    except KeyError:
        pass
    fdp = descriptor_pb2.FileDescriptorProto()
    alpha_pb2.DESCRIPTOR.CopyToProto(fdp)
    fdp.name, fdp.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    fdp.ClearField("options")
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for msg in fdp.message_type:
        for f in msg.field:
            if f.HasField("type_name"):
                f.type_name = f.type_name.replace(old, new)
    for svc in fdp.service:
        for m in svc.method:
            m.input_type, m.output_type = m.input_type.replace(old, new), m.output_type.replace(old, new)
    pool.AddSerializedFile(fdp.SerializeToString())


def add_reflection(server: grpc.aio.Server, services: Iterable[str]) -> None:
    """Serve reflection v1 and v1alpha for ``services`` (plus both reflection services themselves)."""
    _v1_descriptor()
    names = [*services, REFLECTION_V1, REFLECTION_V1ALPHA]
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    for name in (REFLECTION_V1, REFLECTION_V1ALPHA):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),)
        )
