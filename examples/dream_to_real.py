"""Dream to real: train PPO only inside the neural CartPole, then score it in the real CartPole-v1.

The agent never sees the real game while it learns: it steps ``worldsim/CartPole-v0`` (the
learned world, 16 rows in one batched engine call per step). Afterwards the same policy plays
the real CartPole-v1 from pixels: the real frames go through the same crop + 64x64 area resize
the recorder used, and every action is held for the world's frameskip. Both returns are printed,
next to a random policy's.

    python examples/dream_to_real.py --total-timesteps 50000
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Args:
    world: str = "cartpole"
    """Bundled world name (its real game is used for scoring)."""
    world_path: str = ""
    """A checkpoint to train in instead of the bundled one (same real game)."""
    total_timesteps: int = 50_000
    """PPO environment steps inside the neural world."""
    num_envs: int = 16
    """Neural worlds stepped together (one batched engine call)."""
    n_stack: int = 2
    """Frames stacked as the policy's observation (velocity is not visible in one frame)."""
    max_episode_steps: int = 200
    """Episode length cap, in the neural world and in the real game (recorded frames)."""
    eval_episodes: int = 10
    """Real-game episodes to score the policy (and a random policy) on."""
    seed: int = 0
    """Seed for PPO, the neural world and the real game."""


def parse() -> Args:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Args):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    return Args(**vars(p.parse_args()))


def real_return(policy, args: Args, episodes: int) -> float:  # type: ignore[no-untyped-def]
    """Mean return in the real game, the policy seeing preprocessed frames (stacked like in training)."""
    from worldsim.data.frames import preprocess
    from worldsim.worlds import get_world

    world = get_world(args.world)
    env = world.make_env()
    returns = []
    for ep in range(episodes):
        env.reset(seed=args.seed + 10_000 + ep)
        frame = preprocess(env.render(), world.crop).transpose(2, 0, 1)
        stack = [frame] * args.n_stack
        total = 0.0
        for _ in range(args.max_episode_steps):
            action = policy(np.concatenate(stack, axis=0)[None])
            done = False
            for _ in range(world.frameskip):
                _, r, term, trunc, _ = env.step(int(action))
                total += float(r)
                done = term or trunc
                if done:
                    break
            if done:
                break
            stack = stack[1:] + [preprocess(env.render(), world.crop).transpose(2, 0, 1)]
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def main(args: Args) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecFrameStack

    from worldsim.gym import WorldVectorEnv, to_sb3

    venv = WorldVectorEnv(
        args.world_path or args.world,
        num_envs=args.num_envs,
        channels_first=True,
        max_episode_steps=args.max_episode_steps,
    )
    venv.reset(seed=args.seed)
    vec = VecFrameStack(to_sb3(venv), n_stack=args.n_stack, channels_order="first")
    model = PPO(
        "CnnPolicy", vec, n_steps=128, batch_size=256, n_epochs=4, learning_rate=3e-4, seed=args.seed, verbose=0
    )
    t = time.time()
    model.learn(total_timesteps=args.total_timesteps)
    print(f"trained {args.total_timesteps} steps in the neural world in {time.time() - t:.0f} s")

    # Return inside the dream (neural world), with the same stacking.
    obs, dream, done_eps, ep_ret = vec.reset(), [], 0, np.zeros(args.num_envs)
    while done_eps < args.eval_episodes:
        action, _ = model.predict(obs, deterministic=True)
        obs, rew, done, _ = vec.step(action)
        ep_ret += rew
        for i in np.flatnonzero(done):
            dream.append(ep_ret[i])
            ep_ret[i] = 0
            done_eps += 1
    trained = real_return(lambda o: model.predict(o, deterministic=True)[0][0], args, args.eval_episodes)
    rng = np.random.default_rng(args.seed)
    random = real_return(lambda o: rng.integers(2), args, args.eval_episodes)
    frameskip = 2 if args.world == "cartpole" else 1
    print(f"return in the neural world (frames):   {np.mean(dream):8.1f}")
    print(f"return in the real game (env steps):   {trained:8.1f}   (random policy: {random:.1f})")
    print(f"(one neural frame = {frameskip} real env steps)")


if __name__ == "__main__":
    main(parse())
