"""The gRPC surface: ``worldsim serve`` (``server.py``), micro-batched sessions (``sessions.py``),
the versioned API in ``proto/worldsim/v1`` with stubs in ``_proto`` (``python -m
worldsim.serve.codegen``). The client is :mod:`worldsim.client`."""
