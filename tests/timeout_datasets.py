"""Datasets for the timeout tests (module level: process workers import them)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import prefetch

#: set when a test ends, so a thread stuck "for ever" in this process returns and its
#: (abandoned) thread ends; process workers are killed instead
RELEASE = threading.Event()


class StuckAt(prefetch.PyDataset):
    """Batch `stuck` sleeps "for ever" (until RELEASE, in this process) the first `times`
    times it is asked for (counted in a file: process workers share it), or always."""

    def __init__(self, n: int, stuck: int, flag: str | None = None, slow: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.n, self.stuck, self.flag, self.slow = n, stuck, flag, slow

    def __len__(self):
        return self.n

    def _stuck_now(self, i: int) -> bool:
        if i != self.stuck:
            return False
        if self.flag is None:
            return True
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False  # stuck once already
        os.close(fd)
        return True

    def __getitem__(self, i):
        if self._stuck_now(i):
            while not RELEASE.is_set():
                time.sleep(0.05)  # the stuck line
        elif self.slow:
            time.sleep(self.slow)
        return i


class AsyncStuckAt(StuckAt):
    async def __getitem__(self, i):
        if self._stuck_now(i):
            await asyncio.sleep(3600)  # the stuck line
        elif self.slow:
            await asyncio.sleep(self.slow)
        return i
