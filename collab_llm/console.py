"""What the commands print: known-benign library noise silenced, and compare's stage lines with an ETA.

:func:`quiet_known_noise` drops, by exact message, the lines every run printed and no user can act on:
Lightning's litlogger advertisement, two deprecation notices raised inside Lightning / transformers
(``isinstance(treespec, LeafSpec)``, ``is_gradient_checkpointing``), Lightning's note that modules start in
eval mode (the frozen backbone is, on purpose) and its note that ``training_step`` returned ``None`` (a
closed-form head that skips fine-tuning does, on purpose). Other warnings are left alone.

:class:`StageClock` prints one line per stage of a comparison, e.g.::

    [compare] 3/6 llara: started (elapsed 2m10s; ETA 4m20s for 4 methods left)
    [compare] 3/6 llara: finished in 1m05s (elapsed 3m15s; ETA 3m15s for 3 methods left)
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Callable, Sequence

#: (category, message regex) of warnings that carry no information for a collab-llm user
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (Warning, r".*isinstance\(treespec, LeafSpec\)` is deprecated"),
    (Warning, r".*`is_gradient_checkpointing` is deprecated"),
    (Warning, r"Found \d+ module\(s\) in eval mode at the start of training"),
    (Warning, r".*`training_step` returned `None`"),
    # the collab-llm dispatcher hands LightningCLI the arguments it was given (sys.argv holds the same ones)
    (Warning, r"LightningCLI's args parameter is intended to run from within Python"),
)
_TIP = "try installing [litlogger]"


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _TIP not in record.getMessage()


def quiet_known_noise() -> None:
    """Silence :data:`KNOWN_WARNINGS` and Lightning's litlogger tip (idempotent; other output is kept)."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
            logger.addFilter(_DropLitLoggerTip())


def duration(seconds: float) -> str:
    """``65.2`` -> ``"1m05s"``; ``3700`` -> ``"1h01m"``; under a minute: ``"42s"``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class StageClock:
    """Elapsed time and an ETA over a comparison's methods.

    The ETA of the methods left is the sum of their expected durations: the mean duration of the methods of
    the same ``kind`` this command has run (the CF model alone takes seconds, an LLM method minutes); skipped,
    already finished methods count as done. It is unknown while a kind left has not been timed yet.
    ``clock`` is injectable for tests.
    """

    def __init__(self, methods: Sequence[str], log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.perf_counter, prefix: str = "[compare]",
                 kind: Callable[[str], str] = lambda method: "method") -> None:
        self.methods = list(methods)
        self.kind = kind
        self.log = log
        self.clock = clock
        self.prefix = prefix
        self.start = clock()
        self.durations: dict[str, list[float]] = {}
        self.done = 0
        self._began: float | None = None

    def _status(self) -> str:
        left = len(self.methods) - self.done
        elapsed = f"elapsed {duration(self.clock() - self.start)}"
        if left <= 0:
            return elapsed
        plural = "s" * (left != 1)
        kinds = [self.kind(m) for m in self.methods[self.done:]]
        untimed = sorted({k for k in kinds if k not in self.durations})
        if untimed:
            return f"{elapsed}; ETA unknown for {left} method{plural} left until one {'/'.join(untimed)} method is timed"
        eta = sum(sum(self.durations[k]) / len(self.durations[k]) for k in kinds)
        return f"{elapsed}; ETA {duration(eta)} for {left} method{plural} left"

    def _name(self, method: str) -> str:
        return f"{self.methods.index(method) + 1}/{len(self.methods)} {method}"

    def started(self, method: str) -> None:
        self._began = self.clock()
        self.log(f"{self.prefix} {self._name(method)}: started ({self._status()})")

    def finished(self, method: str) -> None:
        took = self.clock() - (self._began if self._began is not None else self.start)
        self.durations.setdefault(self.kind(method), []).append(took)
        self.done += 1
        self._began = None
        self.log(f"{self.prefix} {self._name(method)}: finished in {duration(took)} ({self._status()})")

    def skipped(self, method: str, why: str) -> None:
        self.done += 1
        self.log(f"{self.prefix} {self._name(method)}: {why} ({self._status()})")
