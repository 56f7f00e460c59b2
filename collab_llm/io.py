"""Atomic writes: an interrupted run never leaves a half-written artifact.

:func:`atomic_dir` builds a folder in a temporary sibling ``.<name>.tmp-<pid>-<random>`` and renames it
into place; an existing folder is first moved aside to ``.<name>.old-<pid>`` and removed once the new
one is in place. Siblings of either kind left by a run that was killed (their process id no longer runs)
are cleaned at the start of the next run on the same target; a ``.old-`` folder whose target is missing
(killed between the two renames) is moved back first, so nothing is lost. ``atomic_dir`` never replaces
a file or a symbolic link, and with ``may_replace`` only a folder that predicate accepts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from collab_llm.errors import UserError


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def leftover_siblings(target: str | os.PathLike) -> list[Path]:
    """``.tmp-`` / ``.old-`` siblings of ``target`` whose writer process no longer runs (see module doc)."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(?:(\d+)-)?([A-Za-z0-9_]*)$")
    found = []
    for entry in target.parent.iterdir():
        m = pattern.match(entry.name)
        if not m or entry.is_symlink() or not entry.is_dir():
            continue
        kind, pid, rest = m.groups()
        if kind == "old":  # ".old-<pid>": the pid is the whole suffix
            pid, rest = (rest, "") if pid is None else (pid, rest)
            if not rest.isdigit() and rest:
                continue
        if pid is not None and pid.isdigit() and _pid_alive(int(pid)):
            continue
        found.append(entry)
    return sorted(found)


def clean_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove what a killed :func:`atomic_dir` on ``target`` left behind; return what was removed.

    A leftover ``.old-`` folder is the previous ``target``: if ``target`` is missing it is renamed back.
    """
    target = Path(target)
    removed = []
    for entry in leftover_siblings(target):
        if ".old-" in entry.name and not os.path.lexists(target):
            os.replace(entry, target)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, may_replace: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``target``; rename it to ``target`` on success.

    An existing ``target`` is replaced only after the new one is complete. On error the temporary
    folder is removed and ``target`` is left as it was. A ``target`` that is a file or a symbolic link
    is refused (:class:`~collab_llm.errors.UserError`); so is an existing non-empty folder for which
    ``may_replace(target)`` is false. Leftovers of a killed earlier run are cleaned first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)

    def check() -> None:
        if target.is_symlink() or (os.path.lexists(target) and not target.is_dir()):
            raise UserError(f"{target}: exists and is not a folder; refusing to replace it (choose another output path)")
        if (may_replace is not None and target.is_dir() and any(target.iterdir()) and not may_replace(target)):
            raise UserError(f"{target}: a non-empty folder this command did not write; refusing to replace it "
                            "(choose another output path)")

    check()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        if os.path.lexists(target):
            check()  # again: the target may have changed while the new folder was being written
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if os.path.lexists(old):
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to ``target`` and rename it over ``target`` when closed cleanly."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(target) as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def emit_result(result: dict[str, Any], out: str | os.PathLike | None, command: str) -> dict[str, Any]:
    """A bench's last step: record ``command`` in ``result``, write it to ``out`` as JSON (atomically;
    skipped when ``out`` is None) and print it as the last line (one JSON object)."""
    result["command"] = command
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json(out, result)
    print(json.dumps(result), flush=True)
    return result
