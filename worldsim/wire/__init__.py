"""What the server and the client share on the wire, and nothing else.

- ``_proto/``: the stubs generated from ``proto/worldsim/v1/*.proto`` (``python -m worldsim.wire.codegen``);
- :mod:`~worldsim.wire.convert`: worldsim values <-> ``worldsim.v1`` messages (spaces, actions, context);
- :mod:`~worldsim.wire.encoding`: frames as raw bytes, PNG or JPEG;
- :mod:`~worldsim.wire.errors`: one exception type and the ``ErrorReason`` <-> exception table.

``worldsim.serve`` (the server) and :mod:`worldsim.client` both import this package; neither
imports the other.
"""
