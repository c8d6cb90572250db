"""Conversions between worldsim values and ``worldsim.v1`` messages (server and client share them)."""

from __future__ import annotations

from typing import Any

import numpy as np

from worldsim.episodes import validate_action
from worldsim.spaces import ActionError, ActionSpec
from worldsim.wire._proto import world_pb2 as pb

_KINDS = {
    "discrete": pb.ActionSpace.KIND_DISCRETE,
    "multi_discrete": pb.ActionSpace.KIND_MULTI_DISCRETE,
    "multi_binary": pb.ActionSpace.KIND_MULTI_BINARY,
    "box": pb.ActionSpace.KIND_BOX,
}
_FIELD = {"discrete": "discrete", "multi_discrete": "multi", "multi_binary": "multi", "box": "continuous"}


# ---------------------------------------------------------------------------- action spaces
def action_space_to_proto(spec: ActionSpec) -> pb.ActionSpace:
    return pb.ActionSpace(
        kind=_KINDS[spec.kind],
        n=spec.n,
        start=spec.start,
        nvec=list(spec.nvec),
        shape=list(spec.shape),
        low=list(spec.low),
        high=list(spec.high),
        json=spec.to_json(),
    )


def action_space_from_proto(msg: pb.ActionSpace) -> ActionSpec:
    """The ActionSpec a server describes (its JSON when present, else the structured fields)."""
    if msg.json:
        return ActionSpec.from_json(msg.json)
    kind = {v: k for k, v in _KINDS.items()}.get(msg.kind)
    if kind is None:
        raise ValueError(f"unknown action space kind {msg.kind}")
    return ActionSpec(
        kind=kind,  # type: ignore[arg-type]
        n=msg.n,
        nvec=tuple(msg.nvec),
        shape=tuple(msg.shape),
        low=tuple(msg.low),
        high=tuple(msg.high),
        start=msg.start,
    )


# ---------------------------------------------------------------------------- actions
def action_to_proto(action: Any, spec: ActionSpec) -> pb.Action:
    """One action -> ``Action``, checked first with :func:`worldsim.episodes.validate_action`
    (:class:`ActionError` with the local env's message if it does not fit)."""
    a = validate_action(spec, action)
    if spec.kind == "discrete":
        return pb.Action(discrete=int(a))
    if spec.kind == "box":
        return pb.Action(continuous=pb.FloatArray(values=a.astype(np.float64).reshape(-1).tolist()))
    return pb.Action(multi=pb.IntArray(values=a.reshape(-1).tolist()))


def action_from_proto(msg: pb.Action, spec: ActionSpec) -> np.ndarray:
    """``Action`` -> one canonical action (:func:`worldsim.episodes.validate_action`), or ActionError."""
    field = msg.WhichOneof("value")
    if field is None:
        raise ActionError("the action is empty: set one of discrete, multi, continuous")
    if field != _FIELD[spec.kind]:
        raise ActionError(f"a {field} action does not fit the world's {spec.kind} action space")
    if field == "discrete":
        raw: Any = msg.discrete
    elif field == "multi":
        raw = np.asarray(msg.multi.values, dtype=np.int64)
    else:
        raw = np.asarray(msg.continuous.values, dtype=np.float32)
    return validate_action(spec, raw)


# ---------------------------------------------------------------------------- context frames
def context_to_proto(frames: Any, actions: Any, spec: ActionSpec) -> pb.Context:
    f = np.asarray(frames)
    if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"context frames must be uint8 (K, H, W, 3), got {f.dtype} {f.shape}")
    msg = pb.Context(frames=np.ascontiguousarray(f).tobytes(), shape=list(f.shape))
    if actions is not None:
        acts = list(actions)
        msg.actions.extend(action_to_proto(a, spec) for a in acts)
    return msg


def context_from_proto(msg: pb.Context, spec: ActionSpec, k: int, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``Context`` -> (frames (K, H, W, 3) uint8, actions (K, ...) or None); ValueError if malformed."""
    shape = tuple(msg.shape)
    if shape != (k, size, size, 3):
        raise ValueError(f"context frames must have shape [{k}, {size}, {size}, 3], got {list(shape)}")
    if len(msg.frames) != int(np.prod(shape)):
        raise ValueError(f"context of shape {list(shape)} needs {int(np.prod(shape))} bytes, got {len(msg.frames)}")
    frames = np.frombuffer(msg.frames, np.uint8).reshape(shape).copy()
    if not msg.actions:
        return frames, None
    if len(msg.actions) != k:
        raise ValueError(f"context needs {k} actions (one per frame) or none, got {len(msg.actions)}")
    return frames, np.stack([action_from_proto(a, spec) for a in msg.actions])
