"""Progress of long calls drawn with tqdm (``tqdm.auto``: a widget in notebooks) where
it is installed; silent otherwise, or when ``PINPOINT_PROGRESS=0``."""

from __future__ import annotations

import os
from typing import Callable, Optional


class _Bars:
    """Called by the engine's poller with (message, position, length); one tqdm bar per
    engine bar (a new length or a position going back starts a new one)."""

    def __init__(self, tqdm):
        self._tqdm = tqdm
        self._bar = None
        self._key = None

    def __call__(self, message: str, pos: int, length: int) -> None:
        if self._bar is None or self._key != length or pos < self._bar.n:
            self.close()
            self._bar = self._tqdm(total=length or None, desc=message, leave=False)
            self._key = length
        else:
            self._bar.set_description_str(message, refresh=False)
        self._bar.update(pos - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __del__(self):
        self.close()


def progress_callback() -> Optional[Callable[[str, int, int], None]]:
    """A fresh progress sink for one call, or None (no tqdm, or turned off).

    Example:
        >>> import os; os.environ["PINPOINT_PROGRESS"] = "0"   # silence every bar
    """
    if os.environ.get("PINPOINT_PROGRESS", "1") == "0":
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return _Bars(tqdm)
