"""Whether a window can open here: one answer for the player and for human recording."""

from __future__ import annotations

import os
import sys


def has_display() -> bool:
    """False when a pygame window surely cannot open (Linux without X11 or Wayland and no SDL
    video driver chosen); True otherwise. An explicit ``SDL_VIDEODRIVER`` (``dummy``,
    ``offscreen``, ``kmsdrm``, ...) is trusted: SDL is left to try it, and a failure to open the
    window is reported then."""
    if os.environ.get("SDL_VIDEODRIVER"):
        return True
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True
