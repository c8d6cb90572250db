"""Tiny random-weight worlds for tests and examples (no training, no data, builds in ~0.1 s).

world = tiny_world()                       # Discrete(2) actions, 2 context frames
world.save(tmp_path / "tiny.safetensors")  # a real, loadable checkpoint

Also the small pieces several test files share: a bare denoiser and random actions for it
(:func:`tiny_denoiser`, :func:`random_actions`), a toy game's episodes to train on
(:func:`toy_episodes`) and a world file served on a free port (:func:`serving`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from worldsim.engine.cache import CacheConfig
from worldsim.engine.sampler import SamplerConfig
from worldsim.engine.world import WorldConfig, WorldModel
from worldsim.model.codec import CodecConfig
from worldsim.model.denoiser import CausalDenoiser, DenoiserConfig
from worldsim.spaces import ActionSpec

if TYPE_CHECKING:
    from worldsim.serve.server import BackgroundServer
    from worldsim.train.data import AlignedEpisode, Batch, ClipSampler


def tiny_denoiser(kind: str = "discrete", seed: int = 0) -> tuple[CausalDenoiser, ActionSpec]:
    """A bare 2-block denoiser (4x4x4 latents) for one of the compliance suite's action spaces
    (:func:`worldsim.compliance.spaces`, by kind), its weights drawn from N(0, 0.1) (adaLN-Zero's
    init would make the outputs ignore the inputs), in eval mode; and its action spec."""
    from worldsim.compliance import spaces

    torch.manual_seed(seed)
    spec = ActionSpec.from_space(spaces()[kind])
    m = CausalDenoiser(DenoiserConfig(latent_channels=4, latent_size=4, dim=32, depth=2, heads=2), spec)
    for p in m.parameters():
        p.data.normal_(0, 0.1)
    return m.eval(), spec


def random_actions(spec: ActionSpec, B: int, T: int, seed: int = 0) -> torch.Tensor:
    """(B, T, ...) valid actions drawn from ``spec``'s space, reproducible from ``seed``."""
    space = spec.to_space()
    space.seed(seed)
    a = np.stack([spec.validate([space.sample() for _ in range(B)]) for _ in range(T)], axis=1)
    return torch.as_tensor(a)


def tiny_config(action_space: Any = None, **world_kwargs: Any) -> WorldConfig:
    """A world config a few hundred kB in size. ``action_space``: a gymnasium space or ActionSpec."""
    import gymnasium as gym

    space = gym.spaces.Discrete(2) if action_space is None else action_space
    spec = space if isinstance(space, ActionSpec) else ActionSpec.from_space(space)
    codec = CodecConfig(latent_channels=4, channels=(8, 16, 16), decoder_channels=(16, 8, 8))
    den = DenoiserConfig(latent_channels=4, latent_size=codec.latent_size, dim=32, depth=2, heads=2)
    kwargs: dict[str, Any] = dict(
        action_space=spec,
        name="tiny",
        fps=15,
        codec=codec,
        denoiser=den,
        sampler=SamplerConfig(),
        cache=CacheConfig(window=4, sink=1),
    )
    kwargs.update(world_kwargs)
    return WorldConfig(**kwargs)


def tiny_world(action_space: Any = None, seed: int = 0, n_start: int = 4, **world_kwargs: Any) -> WorldModel:
    """A random-weight world with ``n_start`` synthetic start clips, on CPU in fp32."""
    torch.manual_seed(seed)
    cfg = tiny_config(action_space, **world_kwargs)
    world = WorldModel(cfg)
    # Perturb the zero-initialised output layers so that outputs depend on inputs and actions.
    with torch.no_grad():
        for p in world.denoiser.parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.05)
        last = world.denoiser.term_head[-1]
        assert isinstance(last, torch.nn.Linear)
        last.bias.fill_(-6.0)  # episodes do not end by chance
    rng = np.random.default_rng(seed)
    K, s = cfg.context_frames, cfg.codec.image_size
    frames = np.full((n_start, K, s, s, 3), 255, np.uint8)
    for i in range(n_start):
        for k in range(K):
            x = int(rng.integers(4, s - 12))
            frames[i, k, s // 2 : s // 2 + 6, x : x + 8] = (0, 0, 0)
    spec = cfg.action_space
    acts = spec.null(n_start * K).reshape(n_start, K, *spec.per_action_shape)
    world.start_frames = torch.from_numpy(frames)
    world.start_actions = torch.from_numpy(acts)
    world.provenance = {"note": "random weights: worldsim.testing.tiny_world"}
    return world.to_runtime(torch.device("cpu"), torch.float32)


def real_episode(world_def: Any, seed: int, steps: int, policy: Any) -> tuple[np.ndarray, list[Any]]:
    """The real game's frames as a world sees them (:class:`worldsim.real.RealGame`: the recorder's
    crop and 64x64 resize, ``frameskip`` env steps per frame with the action held) and the actions
    taken, for comparing a trained world with its game. ``policy(env, rng) -> action`` is called
    once per frame; frames[i + 1] follows actions[i]. Stops early if the episode ends."""
    from worldsim.real import RealGame

    rng = np.random.default_rng(seed)
    with RealGame.from_world(world_def) as game:
        frames, actions = [game.reset(seed)], []
        for _ in range(steps):
            a = policy(game.env, rng)
            done = game.step(a).done
            frames.append(game.frame())
            actions.append(a)
            if done:
                break
    return np.stack(frames), actions


def toy_episodes(n: int = 4, length: int = 24, seed: int = 0) -> list[AlignedEpisode]:
    """``n`` episodes of a block moved left/right by the actions: a game simple enough for a tiny
    world to learn in seconds (training tests)."""
    from worldsim.train.data import AlignedEpisode

    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n):
        acts = rng.integers(0, 2, length)
        frames = np.full((length + 1, 64, 64, 3), 255, np.uint8)
        x = int(rng.integers(10, 50))
        for i in range(length + 1):
            frames[i, 28:36, x : x + 8] = (30, 30, 200)
            if i < length:
                x = int(np.clip(x + (3 if acts[i] else -3), 0, 56))
        has = np.ones(length + 1, bool)
        has[0] = False
        term = np.zeros(length + 1, bool)
        term[-1] = True
        eps.append(AlignedEpisode(frames, np.concatenate([[0], acts]), has, np.ones(length + 1, np.float32), term))
    return eps


@contextmanager
def serving(path: str | Path, extra: dict[str, WorldModel] | None = None, **cfg: Any) -> Iterator[BackgroundServer]:
    """The world file ``path`` (served as "tiny") plus ``extra`` worlds, served in this process on
    127.0.0.1, port 0 (a free one), until the block ends; ``cfg``: ``ServeConfig`` fields."""
    from worldsim.serve.server import BackgroundServer, ServeConfig

    worlds = {"tiny": WorldModel.load(path, device="cpu"), **(extra or {})}
    with BackgroundServer(worlds, ServeConfig(port=0, **cfg)) as srv:
        yield srv


class FixedSampler:
    """A clip sampler that always returns the same batch (drawn once from ``sampler``): a few
    training steps on it must lower the loss (training tests)."""

    def __init__(self, sampler: ClipSampler, batch: int) -> None:
        self.b = sampler.sample(batch)
        self.rng = sampler.rng

    def sample(self, batch: int) -> Batch:
        return self.b

    def free_share(self) -> float:
        return 1.0
