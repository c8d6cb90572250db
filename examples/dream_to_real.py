"""Dream to real: train PPO only inside the neural CartPole, then score it in the real CartPole-v1.

The agent never sees the real game while it learns: it steps the learned world (the bundled
``cartpole`` or ``--world-path``; ``num_envs`` rows advanced by one batched engine call per step,
through ``WorldVectorEnv`` and the SB3 adapter), or an ensemble of learned worlds
(``--ensemble``, below). Then the
same policy plays the real CartPole-v1 from pixels: each real frame goes through the recorder's
own crop + 64x64 area resize (``worldsim.data.preprocess``) and every action is held for the
world's frameskip, exactly as when the world's training data was recorded. Both returns are
printed, next to a random policy's in both games.

Two observation modes, both computed from the frames alone (the agent never sees the game's
internals, in the dream or in the real game):

- ``--obs pixels``: ``n_stack`` stacked 64x64 frames, PPO's ``CnnPolicy``;
- ``--obs state``: the world's state reader (``WorldDef.state_reader``, for CartPole the cart's
  x and the pole's angle read off the pixels by colour) applied to every frame, ``n_stack``
  stacked, PPO's ``MlpPolicy``: a fixed, untrained feature extractor on the same frames, which
  lets PPO learn in minutes on a CPU instead of hours.

    python examples/dream_to_real.py --obs state --total-timesteps 60000
    python examples/dream_to_real.py --total-timesteps 100000                               # pixels
    python examples/dream_to_real.py --world-path tiny.safetensors --total-timesteps 256   # smoke test

DIAMOND's loop, when one round falls short: ``--collect-out data/cartpole-agent`` records real
episodes played by the trained agent (with state-independent exploration mixed in, so the world
keeps learning what each action does) through ``worldsim record``'s own recorder; fine-tune the
world on them and train again::

    python examples/dream_to_real.py --obs state --total-timesteps 50000 --collect-out data/cartpole-agent
    worldsim train cartpole --stage finetune --init envs/cartpole/cartpole.safetensors \
        --data data/cartpole-agent data/cartpole --runs runs-round2
    python examples/dream_to_real.py --obs state --world-path runs-round2/cartpole/finetune/world.safetensors

An ensemble, when one world's errors are what the agent learns (it leans on a push that is too
strong in the dream, and fails in the game): ``--ensemble`` splits the rows over several worlds
of the game, each a checkpoint with its own sampler (action guidance sets how hard a push is
felt), so the agent must succeed in all of them (model-based RL's answer, as in ME-TRPO)::

    python examples/dream_to_real.py --obs state --num-envs 32 \
        --ensemble 'envs/cartpole/cartpole.safetensors@guidance_scale=3.0|round7.safetensors@guidance_scale=1.5'

Which snapshot to score: the agent's return in the worlds it trains in keeps rising after its
real return starts to fall. ``--select-in`` scores it every ``--select-every`` steps in a world it
never trains in and keeps the best snapshot (``worldsim.gym.dream.held_out_selection``). The
CartPole agent that met the 450 target (the card has the command)::

    python examples/dream_to_real.py --obs state --total-timesteps 60000 --end-rule \
        --end-bounds 'cart_x=-1.6:1.6' --mirror 1,0 --ensemble '...' --select-in 'C.safetensors@guidance_scale=1.5'

Returns are in the real game's reward units in both worlds: a neural frame's reward is the sum
of the real rewards over the frameskip, as recorded.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Args:
    world: str = "cartpole"
    """Bundled world: its gym id is trained in, its real game (and crop, frameskip) scores the agent."""
    world_path: str = ""
    """Train in this checkpoint instead of the bundled one (a world of the same real game)."""
    sampler: str = ""
    """Override the world's sampler for training and the dream scores: FIELD=VALUE items separated by ';' (e.g. guidance_scale=1.5)."""
    ensemble: str = ""
    """Train in several worlds at once, rows split evenly: members separated by '|', each PATH[@FIELD=VALUE;...] (a checkpoint and its sampler overrides), e.g. 'a.safetensors@guidance_scale=3.0|b.safetensors@guidance_scale=1.5'. Replaces --world-path / --sampler."""
    obs: str = "pixels"
    """What the agent sees of each frame: "pixels" (CnnPolicy) or "state" (the world's state reader, MlpPolicy)."""
    total_timesteps: int = 100_000
    """PPO environment steps (neural frames) inside the neural world."""
    num_envs: int = 16
    """Neural worlds stepped together (one batched engine call per step)."""
    n_steps: int = 128
    """PPO rollout length per env (shortened automatically for tiny --total-timesteps)."""
    batch_size: int = 256
    """PPO minibatch size."""
    n_epochs: int = 4
    """PPO epochs per rollout."""
    learning_rate: float = 3e-4
    """PPO learning rate."""
    gamma: float = 0.99
    """PPO discount per frame."""
    gae_lambda: float = 0.95
    """PPO GAE lambda."""
    end_rule: bool = False
    """Also end dream episodes where the state read off a dreamed frame crosses the game's bounds (WorldDef.frames_done; CartPole: |x| > 2.4, |angle| > 0.21), as worldsim eval ends world episodes; the termination head alone rarely learned the cart's bounds."""
    end_bounds: str = ""
    """Also end dream episodes where a read state variable leaves these bounds, NAME=LOW:HIGH items separated by ';' (e.g. 'cart_x=-1.2:1.2'): a safety margin inside the game's own bounds, for the variables the worlds get least right over long rollouts."""
    n_stack: int = 2
    """Frames stacked as the policy's observation (one frame shows no velocity)."""
    max_episode_steps: int = 250
    """Episode cap in frames, in the neural world and in the real game alike."""
    eval_episodes: int = 20
    """Episodes to score each policy on, in the neural world and in the real game."""
    json_out: str = ""
    """Write the results (returns, wall times, arguments) to this JSON file."""
    seed: int = 0
    """Seed for PPO, the neural world and the real game's episodes."""
    mirror: str = ""
    """For a game that looks the same in a mirror: the action permutation of the mirror (CartPole: '1,0'). The agent's policy is then a worldsim.gym.symmetric.MirrorPolicy, while it learns and when it plays: the average of its action probabilities and those of the mirrored observation, actions swapped (symmetric by construction; a read state mirrors to its negative, frames flip left-right). A loaded plain agent is made symmetric with the same weights."""
    mirror_rows: bool = False
    """With --mirror: also train with half of each world's rows seen in a mirror (worldsim.gym.ensemble.mirror_rows). Measured on CartPole (the card): it did not help."""
    load_agent: str = ""
    """Start from this saved agent (.zip, from --save-agent); with --total-timesteps 0 only score it."""
    real_only: bool = False
    """Score in the real game only (the dream scores step the world, which takes minutes)."""
    save_agent: str = ""
    """Save the trained PPO agent to this .zip (stable_baselines3's format)."""
    select_in: str = ""
    """Keep the snapshot that does best in a world the agent does not train in: PATH[@FIELD=VALUE;...] (like an --ensemble member). Scored every --select-every steps and at the end; the selected snapshot is the one scored in the real game. Snapshots and scores go to --select-dir."""
    select_every: int = 10_000
    """Steps between two held-out scores with --select-in."""
    select_episodes: int = 16
    """Episodes per held-out score (the same starts every time), one per row of the held-out world."""
    select_dir: str = "runs/selection"
    """Where --select-in writes step-N.zip, best.zip and selection.json."""
    collect_out: str = ""
    """Then record real episodes played by the agent into this data folder (a DIAMOND round)."""
    collect_episodes: int = 200
    """Episodes to record with --collect-out."""
    collect_explore: str = "0.1,0.4"
    """Per-episode share of the agent's actions replaced by random ones, drawn from LOW,HIGH."""
    verbose: int = 0
    """Stable-Baselines3's verbosity: 1 logs each rollout's dream episode return and length (ep_rew_mean, ep_len_mean)."""
    device: str = ""
    """Torch device for the world model ("" = CUDA if available, else CPU)."""


def members(args: Args) -> list[tuple[str, str]]:
    """The dream's worlds as (checkpoint or bundled name, sampler overrides): one, or the --ensemble."""
    if not args.ensemble:
        return [(args.world_path or args.world, args.sampler)]
    out = []
    for item in args.ensemble.split("|"):
        path, _, sampler = item.strip().partition("@")
        if not path:
            raise SystemExit(f"--ensemble: empty member in {args.ensemble!r}; use 'PATH[@FIELD=VALUE;...]|PATH...'")
        out.append((path, sampler))
    if args.num_envs % len(out):
        raise SystemExit(f"--num-envs {args.num_envs} does not split evenly over {len(out)} ensemble members")
    return out


def make_dream(args: Args, worlds: list[tuple[str, str]] | None = None):  # type: ignore[no-untyped-def]
    """The neural world(s) as an SB3 VecEnv: channel-first uint8 frames (or read states), ``n_stack`` stacked.

    ``worlds`` defaults to :func:`members`. With several, each is its own batched vector env of
    ``num_envs / len(worlds)`` rows (:func:`worldsim.gym.ensemble.concat_sb3`): the agent meets
    every member in every rollout.
    """
    from stable_baselines3.common.vec_env import VecFrameStack

    import worldsim  # noqa: F401  (registers worldsim/CartPole-v0)
    from worldsim.gym import WorldVectorEnv, to_sb3
    from worldsim.gym.core import load_world
    from worldsim.gym.dream import read_state_vec
    from worldsim.gym.ensemble import concat_sb3, mirror_rows
    from worldsim.train.recipe import parse_mirror
    from worldsim.worlds import get_world

    pixels = args.obs == "pixels"
    wd = get_world(args.world)
    kwargs: dict[str, Any] = dict(
        channels_first=pixels, max_episode_steps=args.max_episode_steps, end_rule=end_rule(args)
    )
    parts = []
    worlds = worlds or members(args)
    for path, sampler in worlds:
        model = load_world(path, args.device or None)
        if sampler:  # sessions read the sampler when they open: set it before the env exists
            model.config.sampler = model.config.sampler.with_overrides([s for s in sampler.split(";") if s])
        part = to_sb3(WorldVectorEnv(model, num_envs=args.num_envs // len(worlds), **kwargs))
        if args.mirror and args.mirror_rows:  # the odd rows see this world in a mirror
            part = mirror_rows(part, parse_mirror(args.mirror), range(1, part.num_envs, 2))
        parts.append(part)
    venv = parts[0] if len(parts) == 1 else concat_sb3(parts)
    if not pixels:
        try:
            venv = read_state_vec(venv, wd.state_reader)
        except ValueError as e:
            raise SystemExit(f"--obs state: {e}") from None
    vec = VecFrameStack(venv, n_stack=args.n_stack, channels_order="first" if pixels else "last")
    vec.seed(args.seed)
    return vec


def end_rule(args: Args) -> Callable[[np.ndarray], np.ndarray] | None:
    """The dream's extra episode end: the game's bounds (``--end-rule``), tighter ones (``--end-bounds``), both or none."""
    from worldsim.gym import dream
    from worldsim.worlds import get_world

    try:
        return dream.end_rule(get_world(args.world), args.end_rule, args.end_bounds)
    except ValueError as e:
        raise SystemExit(f"--end-bounds: {e}") from None


def real_returns(policy: Callable[[np.ndarray], int], args: Args, episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns of ``episodes`` real episodes and the state read off each one's last frame (how it
    ended: for CartPole, cart x beyond 2.4 or the pole past 0.21 rad); the policy sees
    preprocessed, stacked frames like in training."""
    from worldsim.data import preprocess  # the recorder's crop + area resize
    from worldsim.gym.dream import read_states
    from worldsim.worlds import get_world

    world = get_world(args.world)
    env = world.make_env()

    def frame() -> np.ndarray:
        f = preprocess(env.render(), world.crop)
        if args.obs == "state":  # the same reader on the same 64x64 frame as in the dream
            return read_states(world.state_reader, f[None])[0]
        return f.transpose(2, 0, 1)  # (3, 64, 64), as in the dream

    returns, finals = [], []
    for ep in range(episodes):
        env.reset(seed=args.seed + 10_000 + ep)  # episodes the world was not trained on
        # VecFrameStack starts an episode with zeros in the older slots: do the same.
        first = frame()
        stack = [np.zeros_like(first)] * (args.n_stack - 1) + [first]  # channels (pixels) / features (state)
        total, done = 0.0, False
        for _ in range(args.max_episode_steps):
            action = policy(np.concatenate(stack, axis=0)[None])
            for _ in range(world.frameskip):  # one neural frame = frameskip real steps, action held
                _, r, term, trunc, _ = env.step(action)
                total += float(r)
                done = term or trunc
                if done:
                    break
            if done:
                break
            stack = stack[1:] + [frame()]
        returns.append(total)
        if world.state_reader is not None:
            finals.append(read_states(world.state_reader, preprocess(env.render(), world.crop)[None])[0])
    env.close()
    return np.asarray(returns), np.asarray(finals)


def collect(model: Any, args: Args) -> dict[str, Any]:
    """Record ``collect_episodes`` real episodes played by ``model`` (+ exploration) into ``collect_out``."""
    import argparse
    import dataclasses

    from worldsim.data.policies import register_policy
    from worldsim.data.record import record
    from worldsim.data.record_cli import config_for
    from worldsim.gym.dream import read_states
    from worldsim.worlds import get_world

    world = get_world(args.world)

    policy = greedy(model)

    def agent(env: Any, rng: np.random.Generator) -> Callable[[Any, np.ndarray], int]:
        stack: list[np.ndarray] = []  # this episode's observations, as real_returns builds them

        def act(env: Any, frame: np.ndarray) -> int:
            obs = read_states(world.state_reader, frame[None])[0] if args.obs == "state" else frame.transpose(2, 0, 1)
            stack[:] = (stack or [np.zeros_like(obs)] * args.n_stack)[1:] + [obs]
            return int(policy(np.concatenate(stack, axis=0)[None])[0])

        return act

    register_policy("dream-agent", agent)
    flags = dict(out=args.collect_out, episodes=args.collect_episodes, policy=None, frameskip=None, branch=0.0)
    flags.update(seed=args.seed + 50_000, max_steps=args.max_episode_steps, explore=args.collect_explore)
    cfg = config_for(args.world, argparse.Namespace(**flags))  # the recipe's crop, frameskip, hold...
    cfg = dataclasses.replace(cfg, policies=(("dream-agent", 1.0),))  # seed: states nobody trained on
    return record(cfg)


def mirror_perm(args: Args, action_space: Any) -> list[int]:
    """The action permutation of ``--mirror``, checked against the action space."""
    from worldsim.spaces import ActionSpec
    from worldsim.train.recipe import parse_mirror

    try:
        return [int(a) for a in ActionSpec.from_space(action_space).mirror_table(parse_mirror(args.mirror))]
    except ValueError as e:
        raise SystemExit(f"--mirror: {e}") from None


def train(vec: Any, args: Args) -> tuple[Any, list[dict[str, Any]]]:
    """PPO trained in the dream for ``total_timesteps`` steps (from ``load_agent`` when given); with
    ``--mirror`` its policy is a ``MirrorPolicy`` (symmetric by construction) while it learns too.
    With ``--select-in`` the returned agent is the snapshot that did best in the held-out world,
    and the list its scores (else empty). ``vec`` may be None to only load ``load_agent``."""
    from stable_baselines3 import PPO

    device = "cpu" if not args.device else args.device
    cb = held_out(args)
    if args.load_agent:
        model = PPO.load(args.load_agent, env=vec, device=device)
        if args.mirror:
            from worldsim.gym.symmetric import make_symmetric

            model = make_symmetric(model, **symmetric(args, model.action_space))
        model.verbose = args.verbose
        if args.total_timesteps:
            model.learn(total_timesteps=args.total_timesteps, reset_num_timesteps=False, callback=cb)
    else:
        policy: Any = "CnnPolicy" if args.obs == "pixels" else "MlpPolicy"
        kwargs: dict[str, Any] = {}
        if args.mirror:
            from stable_baselines3.common.torch_layers import NatureCNN

            from worldsim.gym.symmetric import MirrorPolicy

            policy, kwargs = MirrorPolicy, symmetric(args, vec.action_space)
            if args.obs == "pixels":
                kwargs["features_extractor_class"] = NatureCNN
        n_steps = max(2, min(args.n_steps, args.total_timesteps // args.num_envs))
        batch_size = min(args.batch_size, n_steps * args.num_envs)
        model = PPO(
            policy, vec, n_steps=n_steps, batch_size=batch_size, n_epochs=args.n_epochs,
            learning_rate=args.learning_rate, gamma=args.gamma, gae_lambda=args.gae_lambda,
            seed=args.seed, device=device, verbose=args.verbose, policy_kwargs=kwargs,
        )  # fmt: skip
        model.learn(total_timesteps=args.total_timesteps, callback=cb)
    if cb is None:
        return model, []
    cb.vec.close()
    best = max(cb.history, key=lambda h: h["held_out_return"])
    print(f"selected the step-{best['step']} snapshot: {best['held_out_return']:.1f} in the held-out world")
    return PPO.load(cb.best_path, env=vec, device=device), cb.history


def symmetric(args: Args, action_space: Any) -> dict[str, Any]:
    """MirrorPolicy's arguments for ``--mirror``."""
    return {"action_perm": mirror_perm(args, action_space), "obs_mirror": "negate" if args.obs == "state" else "flip"}


def held_out(args: Args) -> Any:
    """The ``--select-in`` callback (scores snapshots in the held-out world), or None."""
    if not args.select_in or not args.total_timesteps:
        return None
    from worldsim.gym.dream import held_out_selection

    path, _, sampler = args.select_in.strip().partition("@")
    vec = make_dream(dataclasses.replace(args, mirror_rows=False), [(path, sampler)])
    return held_out_selection(vec, args.select_dir, args.select_every, args.select_episodes, seed=args.seed + 20_000)


def greedy(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The trained agent's deterministic action for a batch of observations (with ``--mirror``
    the argmax of its action probabilities averaged with the mirrored ones: ``MirrorPolicy``)."""
    return lambda obs: model.predict(obs, deterministic=True)[0]


def main(args: Args) -> dict[str, Any]:
    from worldsim.gym.dream import dream_returns
    from worldsim.worlds import get_world

    vec = make_dream(args) if args.total_timesteps or not args.real_only else None  # scoring a saved agent: no dream
    t = time.time()
    model, selection = train(vec, args)
    train_s = time.time() - t
    if args.total_timesteps:
        print(f"trained PPO for {args.total_timesteps} steps in the neural world in {train_s:.1f} s")

    rng = np.random.default_rng(args.seed)
    n_actions = int(model.action_space.n)
    results: dict[str, Any] = {}
    policy = greedy(model)
    if vec is not None and not args.real_only:
        random_policy = lambda o: rng.integers(n_actions, size=len(o))  # noqa: E731
        results["dream_trained"] = float(dream_returns(vec, policy, args.eval_episodes).mean())
        results["dream_random"] = float(dream_returns(vec, random_policy, args.eval_episodes).mean())
    real, finals = real_returns(lambda o: int(policy(o)[0]), args, args.eval_episodes)
    results["real_trained"] = float(np.mean(real))
    results["real_random"] = float(
        np.mean(real_returns(lambda o: int(rng.integers(n_actions)), args, args.eval_episodes)[0])
    )
    results["real_full_episodes"] = int(np.sum(real >= args.max_episode_steps * get_world(args.world).frameskip))
    if vec is not None:
        vec.close()
    results["train_seconds"] = round(train_s, 1)
    results["eval_seconds"] = round(time.time() - t - train_s, 1)
    if args.save_agent:
        model.save(args.save_agent)
    if args.collect_out:
        manifest = collect(model, args)
        print(f"recorded {manifest['episodes']} real episodes ({manifest['frames']} frames) to {args.collect_out}")
    if args.json_out:
        record = {
            "args": vars(args),
            **results,
            "held_out_selection": selection,
            "real_trained_returns": real.tolist(),
            "real_final_states": finals.tolist(),
        }
        Path(args.json_out).write_text(json.dumps(record, indent=2))
    rows = (("neural world (dream)", "dream"), (f"real game ({args.world}, from pixels)", "real"))
    print(f"{'mean return over ' + str(args.eval_episodes) + ' episodes':<36}{'trained PPO':>12}{'random':>10}")
    for label, key in rows:
        if key + "_trained" in results:
            print(f"  {label:<34}{results[key + '_trained']:12.1f}{results[key + '_random']:10.1f}")
    print(f"  real episodes played to the limit: {results['real_full_episodes']} of {args.eval_episodes}")
    return results


if __name__ == "__main__":
    from worldsim.script_args import parse_args

    main(parse_args(Args, __doc__))
