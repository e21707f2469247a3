"""Plain-text progress for long copies: one line every few seconds, readable in a pod's log as in a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts items and bytes against known totals and prints `label: 120/5,856 files, 45/1,210 MB (4%)`."""

    def __init__(self, label: str, total_items: int, total_bytes: int, every_seconds: float = 2.0):
        self.label, self.total_items, self.total_bytes = label, total_items, total_bytes
        self.items = self.bytes = 0
        self.every_seconds = every_seconds
        self._last_print = time.monotonic()

    def advance(self, size: int) -> None:
        self.items += 1
        self.bytes += size
        now = time.monotonic()
        if now - self._last_print >= self.every_seconds or self.items == self.total_items:
            self._last_print = now
            self.print()

    def print(self) -> None:
        share = 100 * self.bytes / self.total_bytes if self.total_bytes else 100
        print(f"{self.label}: {self.items:,}/{self.total_items:,} files, "
              f"{self.bytes / 1e6:,.0f}/{self.total_bytes / 1e6:,.0f} MB ({share:.0f}%)",
              file=sys.stderr, flush=True)
