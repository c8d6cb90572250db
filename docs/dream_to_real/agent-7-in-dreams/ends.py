"""Agent 7 in the shipped CartPole's dream (termination head only, no read-off end rule): for each
of the 16 rows, its first episode's length in frames and the state read off the dream at the end
([cart x, pole angle] of the frame before and of the end frame). Run from the repo root, ~2 min."""

import sys

import numpy as np
from stable_baselines3 import PPO

sys.path.insert(0, "examples")
import dream_to_real as d  # noqa: E402

from worldsim.gym.symmetric import make_symmetric  # noqa: E402

args = d.Args(obs="state", world_path="envs/cartpole/cartpole.safetensors", mirror="1,0", total_timesteps=0)
vec = d.make_dream(args)
agent = PPO.load("docs/dream_to_real/agent-7.zip", env=vec, device="cpu")
agent = make_symmetric(agent, **d.symmetric(args, vec.action_space))
obs, n = vec.reset(), vec.num_envs
ended, frames, ends = np.zeros(n, bool), np.zeros(n, int), []
while not ended.all():
    obs, _, done, info = vec.step(agent.predict(obs, deterministic=True)[0])
    frames += 1
    for i in np.flatnonzero(done & ~ended):
        ended[i] = True
        ends.append((int(frames[i]), np.round(info[i]["terminal_observation"], 3).tolist()))
for end in sorted(ends):
    print(end)
