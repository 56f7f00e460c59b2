"""Fault injection for the kill -9 tests: a process that SIGKILLs itself at a named point.

``COLLAB_LLM_KILL_AT=<point>`` (or ``<point>:<n>``) makes the process send itself ``SIGKILL`` the n-th
time (default: the first) it reaches :func:`kill_point` with that name, so a test can end a real command
at a deterministic place and check that a rerun recovers. Unset (always, outside tests) it does nothing.
Nothing is cleaned up, flushed or unlocked on the way out: it is a real ``kill -9``.

Points:

- ``atomic_dir:written``: inside :func:`collab_llm.io.atomic_dir`, the new folder complete in its
  temporary sibling, before anything is renamed (``prepare`` tables written, a CF export's weights,
  ``metrics.json`` and ``config.json`` written).
- ``atomic_dir:moved_aside``: the old target moved to ``.<name>.old-<pid>``, the new one not yet in place.
- ``train_batch``: the training loader is about to hand out a batch (:class:`collab_llm.datamodule.
  ResumableLoader`); ``train_batch:<k+1>`` dies right after step ``k``'s ``on_train_batch_end`` (where
  ``ModelCheckpoint(every_n_train_steps=k)`` saved).
- ``atomic_file:<file name>``: inside :func:`collab_llm.io.atomic_file`, the temporary file complete, before
  it is renamed to ``<file name>`` (``atomic_file:result.json:2``: ``compare`` finished its first method and
  is recording its second).
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "COLLAB_LLM_KILL_AT"
_reached: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process if ``$COLLAB_LLM_KILL_AT`` names ``name`` and this is its n-th arrival."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    point, _, count = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "1")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
