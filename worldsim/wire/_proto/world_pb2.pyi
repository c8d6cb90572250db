from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_ENCODING_UNSPECIFIED: _ClassVar[FrameEncoding]
    FRAME_ENCODING_RAW: _ClassVar[FrameEncoding]
    FRAME_ENCODING_PNG: _ClassVar[FrameEncoding]
    FRAME_ENCODING_JPEG: _ClassVar[FrameEncoding]

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_WORLD_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_SESSION_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_ACTION: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_ARGUMENT: _ClassVar[ErrorReason]
    ERROR_REASON_SESSION_LIMIT: _ClassVar[ErrorReason]
    ERROR_REASON_EPISODE_ENDED: _ClassVar[ErrorReason]
    ERROR_REASON_STEP_IN_FLIGHT: _ClassVar[ErrorReason]
    ERROR_REASON_UNAUTHENTICATED: _ClassVar[ErrorReason]
    ERROR_REASON_UNSUPPORTED_ENCODING: _ClassVar[ErrorReason]
    ERROR_REASON_MESSAGE_TOO_LARGE: _ClassVar[ErrorReason]
    ERROR_REASON_MALFORMED_REQUEST: _ClassVar[ErrorReason]
    ERROR_REASON_WORLD_UNHEALTHY: _ClassVar[ErrorReason]
    ERROR_REASON_UNKNOWN_METHOD: _ClassVar[ErrorReason]
FRAME_ENCODING_UNSPECIFIED: FrameEncoding
FRAME_ENCODING_RAW: FrameEncoding
FRAME_ENCODING_PNG: FrameEncoding
FRAME_ENCODING_JPEG: FrameEncoding
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_WORLD_NOT_FOUND: ErrorReason
ERROR_REASON_SESSION_NOT_FOUND: ErrorReason
ERROR_REASON_INVALID_ACTION: ErrorReason
ERROR_REASON_INVALID_ARGUMENT: ErrorReason
ERROR_REASON_SESSION_LIMIT: ErrorReason
ERROR_REASON_EPISODE_ENDED: ErrorReason
ERROR_REASON_STEP_IN_FLIGHT: ErrorReason
ERROR_REASON_UNAUTHENTICATED: ErrorReason
ERROR_REASON_UNSUPPORTED_ENCODING: ErrorReason
ERROR_REASON_MESSAGE_TOO_LARGE: ErrorReason
ERROR_REASON_MALFORMED_REQUEST: ErrorReason
ERROR_REASON_WORLD_UNHEALTHY: ErrorReason
ERROR_REASON_UNKNOWN_METHOD: ErrorReason

class ActionSpace(_message.Message):
    __slots__ = ("kind", "n", "start", "nvec", "shape", "low", "high", "json")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[ActionSpace.Kind]
        KIND_DISCRETE: _ClassVar[ActionSpace.Kind]
        KIND_MULTI_DISCRETE: _ClassVar[ActionSpace.Kind]
        KIND_MULTI_BINARY: _ClassVar[ActionSpace.Kind]
        KIND_BOX: _ClassVar[ActionSpace.Kind]
    KIND_UNSPECIFIED: ActionSpace.Kind
    KIND_DISCRETE: ActionSpace.Kind
    KIND_MULTI_DISCRETE: ActionSpace.Kind
    KIND_MULTI_BINARY: ActionSpace.Kind
    KIND_BOX: ActionSpace.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    NVEC_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    kind: ActionSpace.Kind
    n: int
    start: int
    nvec: _containers.RepeatedScalarFieldContainer[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    low: _containers.RepeatedScalarFieldContainer[float]
    high: _containers.RepeatedScalarFieldContainer[float]
    json: str
    def __init__(self, kind: _Optional[_Union[ActionSpace.Kind, str]] = ..., n: _Optional[int] = ..., start: _Optional[int] = ..., nvec: _Optional[_Iterable[int]] = ..., shape: _Optional[_Iterable[int]] = ..., low: _Optional[_Iterable[float]] = ..., high: _Optional[_Iterable[float]] = ..., json: _Optional[str] = ...) -> None: ...

class WorldInfo(_message.Message):
    __slots__ = ("name", "observation_shape", "fps", "max_sessions", "active_sessions", "action_space", "context_frames")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ACTION_SPACE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FRAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    observation_shape: _containers.RepeatedScalarFieldContainer[int]
    fps: int
    max_sessions: int
    active_sessions: int
    action_space: ActionSpace
    context_frames: int
    def __init__(self, name: _Optional[str] = ..., observation_shape: _Optional[_Iterable[int]] = ..., fps: _Optional[int] = ..., max_sessions: _Optional[int] = ..., active_sessions: _Optional[int] = ..., action_space: _Optional[_Union[ActionSpace, _Mapping]] = ..., context_frames: _Optional[int] = ...) -> None: ...

class ListWorldsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorldsResponse(_message.Message):
    __slots__ = ("worlds",)
    WORLDS_FIELD_NUMBER: _ClassVar[int]
    worlds: _containers.RepeatedCompositeFieldContainer[WorldInfo]
    def __init__(self, worlds: _Optional[_Iterable[_Union[WorldInfo, _Mapping]]] = ...) -> None: ...

class SessionOptions(_message.Message):
    __slots__ = ("max_episode_steps", "encoding", "jpeg_quality")
    MAX_EPISODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    max_episode_steps: int
    encoding: FrameEncoding
    jpeg_quality: int
    def __init__(self, max_episode_steps: _Optional[int] = ..., encoding: _Optional[_Union[FrameEncoding, str]] = ..., jpeg_quality: _Optional[int] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("frames", "shape", "actions")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    frames: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    actions: _containers.RepeatedCompositeFieldContainer[Action]
    def __init__(self, frames: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("world", "seed", "options", "context")
    WORLD_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    world: str
    seed: int
    options: SessionOptions
    context: Context
    def __init__(self, world: _Optional[str] = ..., seed: _Optional[int] = ..., options: _Optional[_Union[SessionOptions, _Mapping]] = ..., context: _Optional[_Union[Context, _Mapping]] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session_id", "world", "frame")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WORLD_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    world: WorldInfo
    frame: Frame
    def __init__(self, session_id: _Optional[str] = ..., world: _Optional[_Union[WorldInfo, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class IntArray(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class FloatArray(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("discrete", "multi", "continuous")
    DISCRETE_FIELD_NUMBER: _ClassVar[int]
    MULTI_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_FIELD_NUMBER: _ClassVar[int]
    discrete: int
    multi: IntArray
    continuous: FloatArray
    def __init__(self, discrete: _Optional[int] = ..., multi: _Optional[_Union[IntArray, _Mapping]] = ..., continuous: _Optional[_Union[FloatArray, _Mapping]] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "action")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    action: Action
    def __init__(self, session_id: _Optional[str] = ..., action: _Optional[_Union[Action, _Mapping]] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("session_id", "seed", "context")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seed: int
    context: Context
    def __init__(self, session_id: _Optional[str] = ..., seed: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("data", "shape", "encoding", "reward", "terminated", "truncated", "frame_index", "latency_ms", "session_id", "episode", "batch_size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    encoding: FrameEncoding
    reward: float
    terminated: bool
    truncated: bool
    frame_index: int
    latency_ms: float
    session_id: str
    episode: int
    batch_size: int
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., encoding: _Optional[_Union[FrameEncoding, str]] = ..., reward: _Optional[float] = ..., terminated: _Optional[bool] = ..., truncated: _Optional[bool] = ..., frame_index: _Optional[int] = ..., latency_ms: _Optional[float] = ..., session_id: _Optional[str] = ..., episode: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "world", "frame_index", "episode", "idle_seconds", "done", "options")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WORLD_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    world: str
    frame_index: int
    episode: int
    idle_seconds: float
    done: bool
    options: SessionOptions
    def __init__(self, session_id: _Optional[str] = ..., world: _Optional[str] = ..., frame_index: _Optional[int] = ..., episode: _Optional[int] = ..., idle_seconds: _Optional[float] = ..., done: _Optional[bool] = ..., options: _Optional[_Union[SessionOptions, _Mapping]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
