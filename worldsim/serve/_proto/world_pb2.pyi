from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_ENCODING_RAW: _ClassVar[FrameEncoding]
    FRAME_ENCODING_PNG: _ClassVar[FrameEncoding]
    FRAME_ENCODING_JPEG: _ClassVar[FrameEncoding]
FRAME_ENCODING_RAW: FrameEncoding
FRAME_ENCODING_PNG: FrameEncoding
FRAME_ENCODING_JPEG: FrameEncoding

class WorldInfo(_message.Message):
    __slots__ = ("name", "action_space_json", "observation_shape", "fps", "max_sessions", "active_sessions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_SPACE_JSON_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    action_space_json: str
    observation_shape: _containers.RepeatedScalarFieldContainer[int]
    fps: int
    max_sessions: int
    active_sessions: int
    def __init__(self, name: _Optional[str] = ..., action_space_json: _Optional[str] = ..., observation_shape: _Optional[_Iterable[int]] = ..., fps: _Optional[int] = ..., max_sessions: _Optional[int] = ..., active_sessions: _Optional[int] = ...) -> None: ...

class ListWorldsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorldsResponse(_message.Message):
    __slots__ = ("worlds",)
    WORLDS_FIELD_NUMBER: _ClassVar[int]
    worlds: _containers.RepeatedCompositeFieldContainer[WorldInfo]
    def __init__(self, worlds: _Optional[_Iterable[_Union[WorldInfo, _Mapping]]] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("world", "seed", "max_episode_steps", "encoding")
    WORLD_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_EPISODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    world: str
    seed: int
    max_episode_steps: int
    encoding: FrameEncoding
    def __init__(self, world: _Optional[str] = ..., seed: _Optional[int] = ..., max_episode_steps: _Optional[int] = ..., encoding: _Optional[_Union[FrameEncoding, str]] = ...) -> None: ...

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
    __slots__ = ("session_id", "seed")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seed: int
    def __init__(self, session_id: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("data", "shape", "encoding", "reward", "terminated", "truncated", "frame_index", "latency_ms", "session_id")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    encoding: FrameEncoding
    reward: float
    terminated: bool
    truncated: bool
    frame_index: int
    latency_ms: float
    session_id: str
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., encoding: _Optional[_Union[FrameEncoding, str]] = ..., reward: _Optional[float] = ..., terminated: _Optional[bool] = ..., truncated: _Optional[bool] = ..., frame_index: _Optional[int] = ..., latency_ms: _Optional[float] = ..., session_id: _Optional[str] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "world", "frame_index", "episodes", "idle_seconds", "done")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WORLD_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    world: str
    frame_index: int
    episodes: int
    idle_seconds: float
    done: bool
    def __init__(self, session_id: _Optional[str] = ..., world: _Optional[str] = ..., frame_index: _Optional[int] = ..., episodes: _Optional[int] = ..., idle_seconds: _Optional[float] = ..., done: _Optional[bool] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
