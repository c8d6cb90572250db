"""breakout: Atari Breakout (ale-py), learned as a neural world.

Why Breakout: at 64x64 its bricks, paddle and ball stay visible and its dynamics are mostly local
(a ball bouncing, a paddle sliding); Pong's ball shrinks to about a pixel, Boxing's fighters
are detailed sprites, Freeway is many small moving cars. Frames are cropped to the playfield
(rows 32-196, columns 8-152: no score, no side walls) and area-resampled to 64x64; the ball
is about one pixel there, the paddle four.
ALE runs with frameskip 4 (15 frames a second of game time, played at 15 fps: real time) and
sticky actions off, so a recording replays exactly from its seed and actions.
"""

from worldsim.worlds import RecordRecipe, WorldDef

from .reader import read_state, true_state

WORLD = WorldDef(
    name="breakout",
    env_id="ALE/Breakout-v5",
    env_kwargs={"frameskip": 4, "repeat_action_probability": 0.0},
    fps=15,
    crop=(32, 196, 8, 152),
    keymap={"space": 1, "right": 2, "left": 3, "d": 2, "a": 3},
    default_action=0,
    gym_id="worldsim/Breakout-v0",
    max_episode_steps=1000,
    record=RecordRecipe(
        policies=(("scripted", 0.6), ("sticky", 0.4)),
        episodes=120,
        seed=0,
        max_episode_steps=500,
    ),
    state_reader=read_state,
    state_names=("paddle_x", "ball_x", "ball_y"),
    true_state=true_state,
    train={
        "codec": {"steps": 2000, "batch": 32},
        "teacher": {"steps": 3000, "batch": 16, "clip_len": 8},
        "student": {"steps": 300, "batch": 16, "ode_batches": 24},
        "self_forcing": {"steps": 200, "batch": 8, "critic_steps": 2},
    },
)
