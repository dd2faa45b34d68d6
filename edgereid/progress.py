"""Progress for long work, shown only where a person watches: a tqdm bar on a terminal; in a pipe or a log (CI,
nohup, a service) one line per finished bar instead of thousands of carriage-return updates."""
from __future__ import annotations

import sys
import time
from typing import Iterable


def on_terminal() -> bool:
    """True when stderr (where progress goes) is an interactive terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class LineProgress:
    """The part of tqdm's interface edgereid uses; prints one summary line to stderr when closed."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it") -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix, self._start, self._closed = 0, "", time.perf_counter(), False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        """Count n more units done."""
        self.n += n

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs) -> None:
        """Remember values (e.g. losses) for the summary line."""
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Remember a text for the summary line."""
        self.postfix = s

    def close(self) -> None:
        """Print the summary line once."""
        if self._closed:
            return
        self._closed = True
        seconds = time.perf_counter() - self._start
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit} in {seconds:.1f} s{tail}", file=sys.stderr, flush=True)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent(LineProgress):
    """Progress switched off: counts, prints nothing."""

    def close(self) -> None:
        self._closed = True


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, leave: bool = True, summary: bool | None = None):
    """A tqdm bar on a terminal, a one-line summary elsewhere, nothing when `enabled` is False.

    `leave` is tqdm's (keep the finished bar); off a terminal `summary` (default: `leave`) says whether the
    finished work prints its line, False for a bar inside a step that reports itself.
    """
    summary = leave if summary is None else summary
    if not enabled or (not summary and not on_terminal()):
        return _Silent(iterable, total, desc, unit)
    if on_terminal():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave)
    return LineProgress(iterable, total, desc, unit)
