"""Your own game, as a new user runs it (docs/your-own-game.md), from the CLI.

Two games worldsim knows nothing about: Pendulum-v1 (Box(1) torque) and Acrobot-v1 (Discrete(3)).
Each is recorded, trained through ``--stage all`` on a two-step budget with a tiny model, evaluated,
played headless, served (both at once) and opened with RemoteWorld, registered with Gymnasium and
checked with ``check_env``; the Box world is driven from posted key events.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
pygame = pytest.importorskip("pygame")

from worldsim.cli import main  # noqa: E402
from worldsim.engine.world import WorldModel  # noqa: E402

GAMES = {"pendulum": "Pendulum-v1", "acrobot": "Acrobot-v1"}
STAGES = ("codec", "teacher", "student", "self-forcing")
STEPS = 2
TINY = [  # worldsim.testing.tiny_config's sizes, and batches a CPU does in milliseconds
    "model.codec.channels=(8,16,16)",
    "model.codec.decoder_channels=(16,8,8)",
    "model.codec.latent_channels=4",
    "model.denoiser.dim=32",
    "model.denoiser.depth=2",
    "model.denoiser.heads=2",
    "model.cache.window=4",
    "model.cache.sink=1",
    "codec.batch=4",
    "teacher.batch=2",
    "teacher.clip_len=6",
    "student.batch=2",
    "student.clip_len=6",
    "student.ode_batches=1",
    "student.teacher_steps=2",
    "self_forcing.batch=2",
    "self_forcing.clip_len=5",
    "self_forcing.critic_steps=1",
    "heads.steps=2",
    "heads.batch=64",
]
SETS = [x for s in TINY for x in ("--set", s)]


def _train(data: Path, runs: Path, *extra: str, name: str | None = None) -> int:
    named = [name] if name else []
    return main(
        ["train", *named, "--stage", "all", "--data", str(data), "--runs", str(runs), "--threads", "1", *SETS, *extra]
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A working folder with both games recorded and trained, as the walkthrough does it."""
    root = tmp_path_factory.mktemp("own_game")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name, env_id in GAMES.items():
            record = ["record", env_id, "--out", f"data/{name}", "--episodes", "4", "--max-steps", "12"]
            assert main([*record, "--policy", "sticky", "--no-check", "--threads", "1"]) == 0
            assert _train(Path("data") / name, Path("runs"), "--steps", str(STEPS)) == 0
        yield root


def _world(root: Path, name: str) -> Path:
    return root / "runs" / name / "self-forcing" / "world.safetensors"


@pytest.mark.parametrize("name", list(GAMES))
def test_world_named_after_its_game_with_the_games_fps_and_the_step_budget(workspace: Path, name: str) -> None:
    world = WorldModel.load(_world(workspace, name), device="cpu")
    assert world.config.name == name  # no name given: the game's id (Pendulum-v1 -> pendulum)
    manifest = json.loads((workspace / "data" / name / "manifest.json").read_text())
    env = gym.make(GAMES[name])
    assert world.config.fps == manifest["fps"] == env.metadata["render_fps"]
    env.close()
    for stage in STAGES:  # --steps with --stage all: every stage ran exactly STEPS steps
        lines = (workspace / "runs" / name / stage / "log.jsonl").read_text().splitlines()
        assert [json.loads(ln)["step"] for ln in lines] == list(range(STEPS)), stage
        assert world.provenance[stage]["config"]["steps"] == STEPS, stage
    assert world.config.controls["keymap"]  # the default key map, stored at train time


def test_stage_all_skips_finished_stages_and_force_retrains(
    workspace: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workspace)
    data, runs = Path("data/acrobot"), Path("runs")
    with caplog.at_level(logging.INFO, logger="worldsim.train.cli"):
        assert _train(data, runs, "--steps", "5") == 0
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skips) == len(STAGES) and all("--force" in s for s in skips)
    codec_log = runs / "acrobot" / "codec" / "log.jsonl"
    assert len(codec_log.read_text().splitlines()) == STEPS  # nothing retrained
    assert _train(data, runs, "--force", "--steps", "1", name="acrobot") == 0
    for stage in STAGES:
        assert len((runs / "acrobot" / stage / "log.jsonl").read_text().splitlines()) == 1, stage
    world = WorldModel.load(runs / "acrobot" / "self-forcing" / "world.safetensors", device="cpu")
    assert world.provenance["codec"]["config"]["steps"] == 1


def test_finetune_rounds_keep_the_sampler_and_refuse_another_game(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--stage finetune --init WORLD (a DIAMOND round): the denoiser moves, the few-step sampler and
    guidance stay, each round is its own provenance entry; a world of another game is refused."""
    import torch

    monkeypatch.chdir(workspace)
    src = _world(workspace, "pendulum")
    before = WorldModel.load(src, device="cpu")
    tune = ["train", "pendulum", "--stage", "finetune", "--data", "data/pendulum", "--threads", "1", *SETS]
    tune += ["--set", "finetune.steps=2", "--set", "finetune.batch=2", "--set", "finetune.clip_len=6"]
    assert main([*tune, "--init", str(src), "--runs", "ft1"]) == 0
    once = Path("ft1/pendulum/finetune/world.safetensors")
    assert main([*tune, "--init", str(once), "--runs", "ft2"]) == 0
    after = WorldModel.load(Path("ft2/pendulum/finetune/world.safetensors"), device="cpu")
    assert after.config.sampler == before.config.sampler
    moved = [not torch.equal(a, b) for a, b in zip(after.denoiser.parameters(), before.denoiser.parameters())]
    assert any(moved)
    assert {"finetune", "finetune-2"} <= set(after.provenance) and "self-forcing" in after.provenance
    assert after.provenance["finetune-2"]["config"]["steps"] == 2
    capsys.readouterr()
    assert main([*tune, "--init", str(_world(workspace, "acrobot")), "--runs", "ft3"]) != 0
    assert "not the same game" in capsys.readouterr().err


def test_self_forcing_again_from_a_fine_tuned_world_with_it_as_teacher(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--stage self-forcing --init WORLD --teacher WORLD: Self Forcing after fine-tune rounds (which train
    with the teacher's loss, i.e. teacher forcing) rolls the fine-tuned world out again, scored against
    itself; the student moves, its sampler stays, the teacher is in the provenance; another game's
    teacher is refused, and a missing one names the flag."""
    import torch

    monkeypatch.chdir(workspace)
    src = _world(workspace, "pendulum")
    before = WorldModel.load(src, device="cpu")
    sf = ["train", "pendulum", "--stage", "self-forcing", "--data", "data/pendulum", "--threads", "1", *SETS]
    sf += ["--set", "self_forcing.steps=2", "--init", str(src)]
    assert main([*sf, "--teacher", str(src), "--runs", "sf1"]) == 0
    after = WorldModel.load(Path("sf1/pendulum/self-forcing/world.safetensors"), device="cpu")
    assert after.config.sampler == before.config.sampler
    assert any(not torch.equal(a, b) for a, b in zip(after.denoiser.parameters(), before.denoiser.parameters()))
    assert after.provenance["self-forcing-2"]["teacher"] == str(src)
    assert after.provenance["self-forcing-2"]["config"]["steps"] == 2
    capsys.readouterr()
    assert main([*sf, "--teacher", str(_world(workspace, "acrobot")), "--runs", "sf2"]) != 0
    assert "acts in" in capsys.readouterr().err
    assert main([*sf, "--runs", "sf3"]) != 0  # no teacher run under sf3/ and no --teacher
    assert "--teacher" in capsys.readouterr().err


def test_heads_refit_on_the_worlds_own_dreams(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--stage heads --init WORLD --set heads.source=dreams: only the termination head may move, the
    world is written to its own run folder, and the provenance says what the heads were fitted on."""
    import torch

    monkeypatch.chdir(workspace)
    src = _world(workspace, "acrobot")
    before = WorldModel.load(src, device="cpu")
    heads = ["train", "acrobot", "--stage", "heads", "--data", "data/acrobot", "--threads", "1", *SETS]
    heads += ["--init", str(src), "--runs", "hd", "--run-name", "dreamed", "--set", "heads.source=dreams"]
    heads += ["--set", "heads.which=termination", "--set", "heads.dream_rollouts=6", "--set", "heads.dream_frames=3"]
    assert main(heads) == 0
    after = WorldModel.load(Path("hd/acrobot/dreamed/world.safetensors"), device="cpu")
    entry = after.provenance["heads"]
    assert entry["config"]["source"] == "dreams" and entry["config"]["dream_rollouts"] == 6
    a, b = after.denoiser.state_dict(), before.denoiser.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("term_head")), "only the head may move"
    assert after.config.sampler == before.config.sampler
    assert "self-forcing" in after.provenance


def test_two_evals_go_to_two_folders(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    quick = ["--episodes", "1", "--horizon", "3", "--horizons", "1,3", "--no-control", "--no-divergence"]
    quick += ["--control-states", "0", "--random-episodes", "0", "--threads", "1", "--device", "cpu"]
    for name in GAMES:
        assert main(["eval", str(_world(workspace, name)), "--world", name, "--data", f"data/{name}", *quick]) == 0
    reports = {name: (workspace / "eval" / name / "report.md").read_text() for name in GAMES}
    assert reports["pendulum"] != reports["acrobot"]
    assert main(["eval", str(_world(workspace, "acrobot")), "--world", "acrobot", *quick]) == 2  # exists: --force


@pytest.mark.parametrize("name", list(GAMES))
def test_headless_play(workspace: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    shot = workspace / f"{name}.png"
    assert main(["play", str(_world(workspace, name)), "--headless", "--frames", "4", "--screenshot", str(shot)]) == 0
    assert f"played 4 frames of {name}" in capsys.readouterr().out and shot.exists()


def test_keyboard_moves_the_box_worlds_action(workspace: Path) -> None:
    """The world file's stored controls: left / right push the torque to its bounds, release returns to 0."""
    import argparse

    from worldsim.keys import KeyTracker, key_code
    from worldsim.play import add_arguments, build
    from worldsim.play.app import PlayerApp

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    setup = build(parser.parse_args([str(_world(workspace, "pendulum")), "--seed", "0"]))
    keys = KeyTracker(setup.keymap, setup.core.backend.spec, setup.default_action, setup.magnitude)
    app = PlayerApp(setup.core, keys, setup.fps, zoom=1, out_dir=workspace, title=setup.title)
    sent: list[Any] = []
    step = app.core.backend.step
    app.core.backend.step = lambda a: (sent.append(np.asarray(a).tolist()), step(a))[1]
    try:
        for kind, key in [(None, None), (pygame.KEYDOWN, "left"), (pygame.KEYUP, "left"), (pygame.KEYDOWN, "right")]:
            if kind is not None:
                pygame.event.post(pygame.event.Event(kind, key=key_code(key)))
            app.tick(pace=False)
    finally:
        app.close()
    assert sent == [[0.0], [-2.0], [0.0], [2.0]]


def test_serve_both_worlds_by_name_and_remote(workspace: Path) -> None:
    from worldsim.client import RemoteWorld
    from worldsim.serve.cli import load_worlds
    from worldsim.serve.server import BackgroundServer, ServeConfig

    pend, acro = str(_world(workspace, "pendulum")), str(_world(workspace, "acrobot"))
    with pytest.raises(SystemExit, match="NAME=PATH"):
        load_worlds([pend, pend], device="cpu")  # both would be 'pendulum'
    worlds = load_worlds([pend, f"car={acro}"], device="cpu")
    assert sorted(worlds) == ["car", "pendulum"]
    with BackgroundServer(worlds, ServeConfig(port=0, max_sessions=2)) as srv:
        env = RemoteWorld(srv.address, "pendulum", seed=0)
        obs, _ = env.step(np.array([1.0], np.float32))[:2]
        assert obs.shape == (64, 64, 3)
        env.close()
        with pytest.raises(ValueError, match="2 worlds"):
            RemoteWorld(srv.address)
    with BackgroundServer(load_worlds([acro], device="cpu"), ServeConfig(port=0, max_sessions=2)) as srv:
        env = RemoteWorld(srv.address, seed=0)  # the only world: no name needed
        assert env.world_name == "acrobot" and env.action_space == gym.spaces.Discrete(3)
        env.close()
        assert main(["play", "--remote", srv.address, "--headless", "--frames", "2"]) == 0


@pytest.mark.parametrize("name", list(GAMES))
def test_gym_make_and_check_env(workspace: Path, name: str) -> None:
    from gymnasium.utils.env_checker import check_env

    from worldsim.gym import register_world

    env_id = register_world(str(_world(workspace, name)), device="cpu")
    assert env_id == f"worldsim/{name}-v0"
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and env.spec is not None and env.spec.max_episode_steps
    env.close()


def test_sampler_sets_the_reset_context_from_a_recording(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """worldsim sampler --context-frames N --data DIR: sessions start from N real frames, the start
    clips are the recording's first N frames, the weights are untouched, and the world plays."""
    import numpy as np
    import torch

    from worldsim.gym.env import WorldEnv

    monkeypatch.chdir(workspace)
    src = _world(workspace, "pendulum")
    before = WorldModel.load(src, device="cpu")
    cmd = ["sampler", str(src), "--context-frames", "3", "--data", "data/pendulum", "--out", "ctx3.safetensors"]
    assert main(cmd) == 0
    after = WorldModel.load(Path("ctx3.safetensors"), device="cpu")
    assert after.config.context_frames == 3 and after.start_frames.shape[1:] == (3, *before.start_frames.shape[2:])
    assert after.start_actions.shape[:2] == after.start_frames.shape[:2]
    assert all(torch.equal(a, b) for a, b in zip(after.denoiser.parameters(), before.denoiser.parameters()))
    assert after.provenance["context"]["from"] == before.config.context_frames
    assert after.provenance["context"]["to"] == 3
    from worldsim.train.data import load_aligned

    first = load_aligned(["data/pendulum"], "val")[0] + load_aligned(["data/pendulum"], "train")[0]
    np.testing.assert_array_equal(after.start_frames[0].numpy(), first[0].frames[:3])
    env = WorldEnv(after)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == (after.config.codec.image_size, after.config.codec.image_size, 3)
    env.close()
    capsys.readouterr()
    assert main(["sampler", str(src), "--context-frames", "3", "--out", "x.safetensors"]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert (
        main(["sampler", str(src), "--context-frames", "99", "--data", "data/pendulum", "--out", "x.safetensors"]) == 2
    )
    assert "cache capacity" in capsys.readouterr().err
    assert not Path("x.safetensors").exists()
