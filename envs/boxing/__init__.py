"""boxing: Atari Boxing (ale-py), learned as a neural world.

Why Boxing (of Breakout, Boxing, Freeway and Pong, looked at as 64x64 frames): its two boxers
are big, high-contrast sprites (about 10x18 pixels at 64x64, white and black on green) that
survive a 64x64 resize and a small frame codec, every action visibly moves the player's boxer,
and rewards (punches landed / taken) come every few seconds. Breakout's and Pong's balls shrink
to a faint pixel, and the ball is what their dynamics are about; Freeway is ten lanes of
2-pixel cars around a 2-pixel chicken.

Frames: the ring with its ropes (rows 24-188, columns 24-136 of the 210x160 screen; the score
and clock above it are cropped away), area-resampled to 64x64. ALE runs with frameskip 4
(15 frames a second of game time, played at 15 fps: real time) and sticky actions off, so a
recording replays exactly from its seed and actions.
"""

from worldsim.worlds import RecordRecipe, WorldDef

from .reader import CROP, STATE_NAMES, read_state, true_state

WORLD = WorldDef(
    name="boxing",
    env_id="ALE/Boxing-v5",
    env_kwargs={"frameskip": 4, "repeat_action_probability": 0.0},
    fps=15,
    crop=CROP,
    # One key at a time (the last pressed wins): arrows / WASD move, Q E Z C move diagonally, space punches.
    keymap={
        "space": 1,
        "up": 2,
        "right": 3,
        "left": 4,
        "down": 5,
        "w": 2,
        "d": 3,
        "a": 4,
        "s": 5,
        "e": 6,
        "q": 7,
        "c": 8,
        "z": 9,
    },
    default_action=0,  # NOOP: stand still
    gym_id="worldsim/Boxing-v0",
    max_episode_steps=1000,
    record=RecordRecipe(
        # Scripted: closes in and punches (wins the bout); sticky: wanders and punches at random,
        # keys held like a player's; random: every frame a new action (fast jitter).
        policies=(("scripted", 0.5), ("sticky", 0.4), ("random", 0.1)),
        episodes=100,
        seed=0,
        max_episode_steps=500,  # 33 s of a 2-minute bout; 100 x 501 frames = 50k frames
    ),
    state_reader=read_state,
    state_names=STATE_NAMES,
    true_state=true_state,
    # A starting point for `worldsim train boxing` on a 2-core CPU; the lead tunes and records the numbers.
    train={
        "codec": {"steps": 2000, "batch": 32},
        "teacher": {"steps": 3000, "batch": 16, "clip_len": 8},
        "student": {"steps": 300, "batch": 16, "ode_batches": 24},
        "self_forcing": {"steps": 200, "batch": 8, "critic_steps": 2},
    },
)
