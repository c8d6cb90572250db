"""cartpole: Gymnasium's CartPole-v1, learned as a neural world.

Frames: the 600x400 render cropped to rows 160-320 (the track, the cart and the pole at every
angle before the episode ends), the full width (the cart's whole range), area-resampled to
64x64: 9.4x horizontally, 2.5x vertically, so the pole keeps its length in pixels.
One recorded frame = 2 env steps (the action held for both): 25 frames a second of game time,
played at 25 fps, i.e. real time.
"""

from worldsim.data.policies import Exploration
from worldsim.worlds import RecordRecipe, WorldDef

from .reader import balance, read_state, state_done, true_state, wrong_way

WORLD = WorldDef(
    name="cartpole",
    env_id="CartPole-v1",
    fps=25,
    frameskip=2,
    crop=(160, 320, 0, 600),
    keymap={"left": 0, "right": 1, "a": 0, "d": 1},
    # CartPole has no "do nothing": with no key held the cart keeps being pushed the way it was last
    # pushed would be surprising, so the default alternates sides (see worldsim.play); 0 here.
    default_action="alternate",
    gym_id="worldsim/CartPole-v0",
    max_episode_steps=500,
    # Actions must not be predictable from the frames, or the world learns the controller instead
    # of the game, and the bot must not act on what the frames do not show, or the world learns a
    # confounder ("pushed right" = "was falling right"). So the balancing bot is `observed`: the
    # `balance` controller on the state read off the recorded frames; exploration replaces 10-50% of
    # its pushes by random ones, and half of its episodes branch into random play from wherever the
    # controller got the pole to, until it falls; random / sticky episodes fall from the start.
    # (Until 2026-12-02 the recipe used `scripted`, which reads the game's internal state.)
    record=RecordRecipe(
        policies=(("observed", 0.75), ("random", 0.15), ("sticky", 0.1)),
        episodes=500,
        seed=0,
        max_episode_steps=250,
        explore=Exploration(epsilon_range=(0.1, 0.5), hold=1.0, branch=0.5, branch_after=(10, 250)),
    ),
    state_reader=read_state,
    state_names=("cart_x", "pole_angle"),
    # The episode ends at |x| > 2.4 or |angle| > 0.2095 rad (12 degrees).
    state_ranges={"cart_x": (-2.4, 2.4), "pole_angle": (-0.21, 0.21)},
    true_state=true_state,
    state_done=state_done,
    # Closed-loop control fidelity (worldsim eval): the real pole stays up under `balance` and falls
    # within frames under `wrong_way`; a world that obeys the controls does the same.
    controllers={"balance": balance, "wrong-way": wrong_way},
    # The recipe `worldsim train cartpole --stage all --baselines` runs on a 2-core CPU (~2 h in all); its
    # teacher learns what actions do from free actions only (teacher.policy_actions="null", the default).
    # The shipped file was warm-started from the previous world, fine-tuned in four rounds and samples with
    # action guidance 3.0 (a fifth round, with free actions only, is measured but not shipped): the exact
    # commands are in README.md (this folder).
    train={
        "codec": {"steps": 1200, "batch": 32},
        "teacher": {"steps": 1800, "batch": 16, "clip_len": 8},
        "student": {"steps": 300, "batch": 16, "ode_batches": 24},
        "self_forcing": {"steps": 200, "batch": 8, "critic_steps": 2},
    },
)
