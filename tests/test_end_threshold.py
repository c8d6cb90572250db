"""The world's end threshold: the termination probability a step reports and the threshold that
turns it into an end, set on a file with ``worldsim sampler --term-threshold``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worldsim.engine.world import WorldModel
from worldsim.testing import tiny_world


def test_a_step_reports_the_probability_its_end_is_decided_by() -> None:
    world = tiny_world()
    sess = world.session(batch=3, seed=[0, 1, 2])
    sess.reset()
    for _ in range(4):
        out = sess.step(np.array([0, 1, 0]))
        assert out.p_terminated.shape == (3,) and out.p_terminated.dtype == np.float32
        assert ((out.p_terminated >= 0) & (out.p_terminated <= 1)).all()
        np.testing.assert_array_equal(out.terminated, out.p_terminated > world.config.term_threshold)


def test_sampler_command_sets_the_threshold(
    tiny_world_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worldsim.cli import main

    out = tmp_path / "t.safetensors"
    assert main(["sampler", str(tiny_world_path), "--term-threshold", "0.35", "--out", str(out)]) == 0
    w = WorldModel.load(out, device="cpu", compile=False)
    assert w.config.term_threshold == 0.35 and w.provenance["threshold"]["from"] == 0.5
    assert main(["sampler", str(out), "--term-threshold", "1.5"]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err
    assert WorldModel.load(out, device="cpu", compile=False).config.term_threshold == 0.35  # nothing written


def test_end_rule_reads_the_last_frames_and_forgets_older_ones() -> None:
    from worldsim.engine.ends import EndRule

    p = np.array([0.1, 0.6, 0.45, 0.45, 0.45, 0.2])
    one = EndRule(1, 0.5, window=1)
    assert [bool(one.step([0], p[t : t + 1])[0]) for t in range(6)] == [False, True, False, False, False, False]
    three = EndRule(1, 0.8, window=3)
    got = [bool(three.step([0], p[t : t + 1])[0]) for t in range(6)]
    want = [1 - np.prod(1 - p[max(0, t - 2) : t + 1]) > 0.8 for t in range(6)]
    assert got == want == [False, False, True, True, True, False]
    three.reset([0])  # a new episode: the old frames no longer count
    assert not three.step([0], np.array([0.45]))[0]
    calm = EndRule(1, 0.7, window=4)  # long balanced play: small probabilities never add up to an end
    assert not any(calm.step([0], np.array([0.05]))[0] for _ in range(500))
    with pytest.raises(ValueError, match="term_window"):
        EndRule(1, 0.5, window=0)


def test_session_ends_rows_by_the_window_rule_per_row() -> None:
    world = tiny_world()
    world.config.term_window, world.config.term_threshold = 3, 0.6
    sess = world.session(batch=3, seed=[0, 1, 2])
    sess.reset()
    hist: list[list[float]] = [[], [], []]
    for t in range(7):
        if t == 4:  # row 1 restarts: its window starts empty again
            sess.reset(rows=[1])
            hist[1] = []
        rows = [0, 2] if t == 5 else [0, 1, 2]  # a subset step leaves row 1's window as it was
        out = sess.step(np.zeros(len(rows), np.int64), rows=rows)
        for i, r in enumerate(rows):
            hist[r].append(float(out.p_terminated[i]))
            want = 1 - np.prod(1 - np.array(hist[r][-3:], np.float64)) > 0.6
            assert bool(out.terminated[i]) == want
    sess.move_row(0, 2)
    np.testing.assert_array_equal(sess.ends.recent[2], sess.ends.recent[0])


def test_sampler_command_sets_the_window(
    tiny_world_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worldsim.cli import main

    out = tmp_path / "w.safetensors"
    assert (
        main(["sampler", str(tiny_world_path), "--term-window", "4", "--term-threshold", "0.7", "--out", str(out)]) == 0
    )
    w = WorldModel.load(out, device="cpu", compile=False)
    assert (w.config.term_window, w.config.term_threshold) == (4, 0.7)
    assert w.provenance["threshold"]["window_from"] == 1 and w.provenance["threshold"]["window_to"] == 4
    assert main(["sampler", str(out), "--term-window", "0"]) == 2
    assert ">= 1 frame" in capsys.readouterr().err
    assert WorldModel.load(tiny_world_path, device="cpu", compile=False).config.term_window == 1  # old files: 1
