"""Agent 7 in the shipped CartPole's dream (termination head only): each row's first end and the state read off it."""

import sys, numpy as np

sys.path.insert(0, "examples")  # run from the repo root
import dream_to_real as d
from stable_baselines3 import PPO
from worldsim.gym.symmetric import make_symmetric

args = d.Args(
    obs="state", world_path="envs/cartpole/cartpole.safetensors", mirror="1,0", eval_episodes=16, total_timesteps=0
)
vec = d.make_dream(args)
m = make_symmetric(
    PPO.load("docs/dream_to_real/agent-7.zip", env=vec, device="cpu"), **d.symmetric(args, vec.action_space)
)
obs = vec.reset()
n = vec.num_envs
done_rows = np.zeros(n, bool)
ends = []
t = np.zeros(n, int)
while not done_rows.all():
    obs, r, done, info = vec.step(m.predict(obs, deterministic=True)[0])
    t += 1
    for i in np.flatnonzero(done):
        if not done_rows[i]:
            ends.append(
                (
                    int(t[i]),
                    np.round(info[i].get("terminal_observation"), 3).tolist(),
                    info[i].get("TimeLimit.truncated", False),
                )
            )
            done_rows[i] = True
for e in sorted(ends):
    print(e)
