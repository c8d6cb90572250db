"""The conformance suite: one tiny world, seed and action sequence through every surface.

WorldEnv, row 0 of WorldVectorEnv, RemoteWorld over a loopback server on port 0 and the player's
backend must show identical frames, rewards, terminated and truncated (at the time limit, after
an episode end, after a reset), and refuse the same actions with the same message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from worldsim import compliance
from worldsim.episodes import validate_action
from worldsim.serve.server import BackgroundServer, ServeConfig
from worldsim.spaces import ActionError, ActionSpec
from worldsim.testing import tiny_world


def _served(world: object, tmp_path: Path, name: str) -> tuple[Path, BackgroundServer]:
    path = tmp_path / f"{name}.safetensors"
    world.save(path)  # type: ignore[attr-defined]
    from worldsim.engine.world import WorldModel

    srv = BackgroundServer({name: WorldModel.load(path, device="cpu")}, ServeConfig(port=0, max_sessions=4))
    return path, srv


@pytest.mark.parametrize("kind", ["discrete", "multi_discrete", "multi_binary", "box"])
def test_every_surface_shows_the_same_episodes_and_refuses_the_same_actions(kind: str, tmp_path: Path) -> None:
    path, srv = _served(tiny_world(compliance.spaces()[kind]), tmp_path, "tiny")
    with srv, compliance.surfaces(path, srv.address, "tiny", max_episode_steps=3) as surfaces:
        spec = ActionSpec.from_space(compliance.spaces()[kind])
        ops = compliance.script(spec, seed=3, limit=3)
        traces = {name: compliance.trace(s, ops) for name, s in surfaces.items()}
        assert compliance.compare(traces) == []
        ref = traces["WorldEnv"]
        labels = [label for label, _ in ref]
        assert labels.count("reset None (after the end)") == 1  # the time limit ended the first episode
        ends = [t.truncated for _, t in ref]
        assert ends[3] and not any(t.terminated for _, t in ref)  # 3rd step of the episode: truncated
        assert len({t.frame.tobytes() for _, t in ref}) > 3 and any(t.reward != 0 for _, t in ref)  # not trivial
        assert compliance.check_actions(surfaces, compliance.ACTIONS[kind]) == []
        remote = surfaces["RemoteWorld"].env
        remote.reset(seed=0)
        assert compliance.check_wire_actions(remote.client, remote.session_id, spec, compliance.ACTIONS[kind]) == []


def test_an_episode_ending_at_the_time_limit_is_terminated_and_truncated(tmp_path: Path) -> None:
    """A world that ends every episode at once, with a 1-step limit: Gymnasium's TimeLimit rule
    (truncated whatever terminated says) on every surface; each end is followed by a reset."""
    path, srv = _served(tiny_world(term_threshold=0.0), tmp_path, "ends")
    with srv, compliance.surfaces(path, srv.address, "ends", max_episode_steps=1) as surfaces:
        ops = compliance.script(ActionSpec.from_space(compliance.spaces()["discrete"]), seed=5, limit=1)
        traces = {name: compliance.trace(s, ops) for name, s in surfaces.items()}
        assert compliance.compare(traces) == []
        steps = [t for label, t in traces["WorldEnv"] if label.startswith("step")]
        assert steps and all(t.terminated and t.truncated for t in steps)


def test_run_serves_the_checkpoint_itself(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    tiny_world().save(path)
    assert compliance.run(path, max_episode_steps=2) == []
    assert compliance.main([str(path), "--max-episode-steps", "1"]) == 0  # python -m worldsim.compliance


def test_the_action_rules() -> None:
    """The decisions the table encodes (integral floats pass integer spaces; fractions, NaN, wrong
    shapes do not) and messages that speak of one action."""
    spaces = compliance.spaces()
    d, box = ActionSpec.from_space(spaces["discrete"]), ActionSpec.from_space(spaces["box"])
    assert validate_action(d, 1.0) == 1 and validate_action(d, [1]) == 1
    for bad, match in ((0.5, "integers, got 0.5"), (2, r"in \[0, 1\], got 2"), ([0, 1], "expected one action")):
        with pytest.raises(ActionError, match=match):
            validate_action(d, bad)
    with pytest.raises(ActionError, match=r"expected one action \(shape \(2,\)\).*got 0.5 of shape \(\)"):
        validate_action(box, 0.5)
    with pytest.raises(ActionError, match="NaN") as e:
        validate_action(box, [float("nan"), 0.0])
    assert "(B" not in str(e.value)
    with pytest.raises(ActionError, match=r"expected 2 actions \(one per row\), got 1"):
        d.validate([0], batch=2)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_surfaces_import_the_engine_episodes_real_and_wire_only() -> None:
    """No surface knows the model or the KV cache; the client never imports the server; the
    player's game logic never imports the client."""
    root = Path(__file__).resolve().parents[1] / "worldsim"
    files = [
        root / "client.py",
        *(root / "gym").glob("*.py"),
        *(root / "serve").glob("*.py"),
        *(root / "play").glob("*.py"),
    ]
    assert len(files) > 10
    for f in files:
        bad = {
            m
            for m in _imports(f)
            if m.startswith("worldsim.model") or m in ("worldsim.engine.cache", "worldsim.engine.sampler")
        }
        assert not bad, f"{f.relative_to(root)} imports {bad}"
    assert not {m for m in _imports(root / "client.py") if m.startswith("worldsim.serve")}
    assert "worldsim.client" not in _imports(root / "play" / "game.py")
    assert not {m for m in _imports(root / "data" / "policies.py") if m.startswith("worldsim.play")}
