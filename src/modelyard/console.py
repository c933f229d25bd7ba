"""Progress output: a live bar on a terminal, plain lines otherwise (CI, logs, DVC)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def say(message: str) -> None:
    """One line for the user, on stderr so stdout stays clean for data."""
    print(message, file=sys.stderr, flush=True)


class Progress:
    """Counts steps toward a total; each `step(note)` advances a bar or prints a line."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.bar = tqdm(total=total, desc=label, file=sys.stderr, leave=True) if sys.stderr.isatty() else None

    def step(self, note: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(1)
        else:
            say(f"{self.label} {self.done}/{self.total}: {note}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
