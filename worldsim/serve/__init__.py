"""The gRPC surface of worldsim.

- ``proto/worldsim/v1/world.proto``: the versioned API (package ``worldsim.v1``); stubs in
  ``worldsim.wire._proto``, regenerated with ``python -m worldsim.wire.codegen``.
- :mod:`worldsim.serve.server`: ``worldsim serve`` on ``grpc.aio`` (health, reflection, token
  auth, TLS, limits, idle eviction, graceful shutdown); ``BackgroundServer`` for in-process use.
- :mod:`worldsim.serve.sessions`: client sessions as rows of one engine, micro-batched.
- :mod:`worldsim.serve.bench`: ``bench_grpc`` for ``worldsim bench --grpc``.

The client side is :mod:`worldsim.client` (``RemoteWorld``, a ``gym.Env``; ``Client``).
"""
