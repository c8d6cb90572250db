"""Recording real games and reading the recordings back.

- :func:`record` / ``worldsim record``: run a Gymnasium env, store 64x64 frames, actions,
  rewards and episode ends in shards with a manifest (resumable, reproducible).
- :func:`load_episodes`, :func:`read_manifest`, :func:`action_spec`: read a data set.
- :class:`ClipDataset`: fixed-length clips inside episodes, for a PyTorch DataLoader.
- :func:`preprocess`: the frame crop + area resize used everywhere a real frame is shown to a model.
"""

from worldsim.data.episodes import Episode, action_spec, load_episodes, read_manifest
from worldsim.data.frames import preprocess

__all__ = ["Episode", "action_spec", "load_episodes", "read_manifest", "preprocess", "ClipDataset", "record"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name == "ClipDataset":
        from worldsim.data.dataset import ClipDataset

        return ClipDataset
    if name == "record":
        from worldsim.data.record import record

        return record
    raise AttributeError(name)
