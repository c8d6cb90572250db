"""The termination head's probability at every frame of the control benchmark's random play.

Replays exactly what `worldsim eval FILE --world cartpole --only-control --random-episodes 200
--random-frames 60 --seed SEED` plays (the same 200 reset states, random actions and noise seeds;
checked: the real lengths and the head's ends equal that command's results.json at seeds 0-2) and
saves, per episode, the real length and the head's probability at each of the 60 world frames, so
that any end rule can be scored offline (rules.py).

    python hazard.py envs/cartpole/cartpole.safetensors SEED hz-SEED.npz   # ~20 min, 1 thread, AVX2 VM
"""

import sys

import numpy as np
import torch

from worldsim.engine.world import WorldModel
from worldsim.eval.control import RealSide, first_true, random_actions, random_play_starts
from worldsim.eval.evaluate import Game
from worldsim.real import RealGame
from worldsim.worlds import get_world

torch.set_num_threads(1)
ckpt, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
game = Game.from_world(get_world("cartpole"))
w = WorldModel.load(ckpt)
real = RealGame(game.spec, w.action_spec, game.true_state)
K = w.config.context_frames
starts = random_play_starts(real, 200, K, seed=seed)
acts = random_actions(w.action_spec, 200, 60, seed)
real_end = first_true(RealSide(real).run(starts, acts).terminated)
B, T = acts.shape[:2]
P = np.zeros((B, T), np.float32)
with torch.inference_mode():
    sess = w.session(batch=B, seed=[seed + i for i in range(B)])  # row i: noise seed seed + i, as the eval
    sess.reset(frames=np.stack([s.frames[-K:] for s in starts]), actions=np.stack([s.actions[-K:] for s in starts]))
    for t in range(T):
        P[:, t] = sess.step(acts[:, t]).p_terminated
np.savez(out, P=P, real_end=real_end)
