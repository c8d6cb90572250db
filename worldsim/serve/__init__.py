"""The gRPC surface of worldsim.

- ``proto/worldsim/v1/world.proto``: the versioned API (package ``worldsim.v1``); stubs in
  ``worldsim.wire._proto``, regenerated with ``python -m worldsim.wire.codegen``.
- :mod:`worldsim.serve.server`: the server on ``grpc.aio`` (TLS, limits, idle eviction, graceful
  shutdown); ``BackgroundServer`` for in-process use. :mod:`worldsim.serve.cli`: ``worldsim serve``.
- :mod:`worldsim.serve.auth`, :mod:`worldsim.serve.interceptors`: token auth first, then unknown
  methods, oversize and undecodable requests, each refused with its status and reason.
- :mod:`worldsim.serve.probes`: health (per world, from a first-step probe), reflection v1 + v1alpha.
- :mod:`worldsim.serve.sessions`: client sessions as rows of one engine, micro-batched.
- :mod:`worldsim.serve.bench`: ``bench_grpc`` for ``worldsim bench --grpc``.

The client side is :mod:`worldsim.client` (``RemoteWorld``, a ``gym.Env``; ``Client``).
"""
