"""Training configuration: one dataclass per stage, a bundled world's recipe over its defaults,
``--set section.field=value`` over both.

Sections: ``model.codec``, ``model.denoiser``, ``model.cache``, ``model.sampler`` (the world's
architecture and sampler) and one per stage: ``codec``, ``teacher``, ``student``, ``self_forcing``,
``heads``, ``guidance``, ``finetune``.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Any

from worldsim.engine.cache import CacheConfig
from worldsim.engine.sampler import SamplerConfig
from worldsim.engine.world import WorldConfig
from worldsim.model.codec import CodecConfig
from worldsim.model.denoiser import DenoiserConfig
from worldsim.train.codec_stage import CodecTrainConfig
from worldsim.train.guidance import GuidanceDistillConfig
from worldsim.train.heads import HeadFitConfig
from worldsim.train.self_forcing import SelfForcingConfig
from worldsim.train.student import StudentTrainConfig
from worldsim.train.teacher import FinetuneConfig, TeacherTrainConfig

STAGES = ("codec", "teacher", "student", "self-forcing")
STAGE_CONFIGS: dict[str, type] = {
    "codec": CodecTrainConfig,
    "teacher": TeacherTrainConfig,
    "student": StudentTrainConfig,
    "self_forcing": SelfForcingConfig,
    "heads": HeadFitConfig,
    "guidance": GuidanceDistillConfig,
    "finetune": FinetuneConfig,
}
MODEL_CONFIGS: dict[str, type] = {
    "model.codec": CodecConfig,
    "model.denoiser": DenoiserConfig,
    "model.cache": CacheConfig,
    "model.sampler": SamplerConfig,
}


def parse_mirror(text: str) -> list[int]:
    """``--mirror 1,0`` -> [1, 0] (the action each action becomes in the mirror)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--mirror takes comma-separated action numbers, e.g. 1,0; got {text!r}") from None


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise SystemExit(f"--set expects section.field=value, got {item!r}")
        key, value = item.split("=", 1)
        section, field = key.rsplit(".", 1)
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        out.setdefault(section, {})[field] = parsed
    return out


def build_config(cls: type, *overrides: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for o in overrides:
        for k, v in o.items():
            if k not in names:
                raise SystemExit(f"{cls.__name__} has no field {k!r}; fields: {', '.join(sorted(names))}")
            merged[k] = tuple(v) if isinstance(v, list) else v
    return cls(**merged)


def world_config(
    name: str, spec: Any, fps: int, recipe: dict[str, Any], sets: dict[str, dict[str, Any]]
) -> WorldConfig:
    codec = build_config(CodecConfig, recipe.get("model.codec", {}), sets.get("model.codec", {}))
    den = build_config(
        DenoiserConfig,
        {"latent_channels": codec.latent_channels, "latent_size": codec.latent_size},
        recipe.get("model.denoiser", {}),
        sets.get("model.denoiser", {}),
    )
    cache = build_config(CacheConfig, recipe.get("model.cache", {}), sets.get("model.cache", {}))
    sampler = build_config(SamplerConfig, recipe.get("model.sampler", {}), sets.get("model.sampler", {}))
    extra = {**recipe.get("model", {}), **sets.get("model", {})}
    return WorldConfig(
        action_space=spec, name=name, fps=fps, codec=codec, denoiser=den, sampler=sampler, cache=cache, **extra
    )


def name_from_env_id(env_id: str) -> str:
    """A world's default name: ``Pendulum-v1`` -> ``pendulum``, ``ALE/Pong-v5`` -> ``pong``,
    ``MountainCarContinuous-v0`` -> ``mountaincarcontinuous`` (namespace and version dropped,
    lower case, only letters, digits, ``_`` and ``-`` kept)."""
    base = re.sub(r"-v\d+$", "", env_id.split("/")[-1])
    return re.sub(r"[^a-z0-9_-]", "", base.lower()) or "world"
