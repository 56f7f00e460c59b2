"""Atomic writes: an interrupted run never leaves a half-written artifact.

:func:`atomic_dir` builds a folder in a temporary sibling ``.<name>.tmp-<pid>-<random>`` and renames it
into place; an existing folder is first moved aside to ``.<name>.old-<pid>`` and removed once the new
one is in place. Siblings of either kind left by a run that was killed (their process id no longer runs)
are cleaned at the start of the next run on the same target; a ``.old-`` folder whose target is missing
(killed between the two renames) is moved back first, so nothing is lost. ``atomic_dir`` never replaces
a file or a symbolic link, and with ``may_replace`` only a folder that predicate accepts.
:func:`atomic_file` writes ``.<name>.tmp-<pid>-<random>`` and renames it; a killed writer's temporary file
is removed by the next write of the same file. The kill -9 tests stop commands inside both
(:mod:`collab_llm.faults`).

Concurrent writers: :func:`output_lock` holds ``.<name>.lock`` next to a target (process id, host, start
time, command) for as long as a command writes it; a second writer is refused with a message naming the
holder. A lock whose process no longer runs on this host is stale and taken over. ``atomic_dir`` takes the
lock while it writes; commands that compute for long before writing (``cf fit``, ``compare``) take it for
their whole run. Nested locks by the same process are free.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from collab_llm.errors import UserError
from collab_llm.faults import kill_point


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
        if not m or entry.is_symlink():
            continue
        kind, pid, rest = m.groups()
        if not entry.is_dir() and not (kind == "tmp" and entry.is_file()):  # atomic_file's temporaries are files
            continue
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
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
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
    with output_lock(target):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        try:
            yield tmp
            kill_point("atomic_dir:written")
            if os.path.lexists(target):
                check()  # again: the target may have changed while the new folder was being written
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                if os.path.lexists(old):
                    shutil.rmtree(old)
                os.replace(target, old)
                kill_point("atomic_dir:moved_aside")
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of ``target``: ``.<name>.lock`` next to it."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _lock_is_stale(holder: dict[str, Any] | None, path: Path) -> bool:
    if holder is None:  # unreadable: stale once it is old enough not to be a lock being written right now
        try:
            return time.time() - path.stat().st_mtime > 60
        except FileNotFoundError:
            return True
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold ``.<name>.lock`` next to ``target`` while the block runs (see the module doc).

    Refuses (:class:`~collab_llm.errors.UserError`) when another live process holds it, naming its
    process id, host, start time and command; takes over a stale lock (its process is gone).
    """
    target = Path(target)
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command or " ".join(sys.argv[:4])}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is not None and holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                yield path  # this process holds it already (a nested write)
                return
            if _lock_is_stale(holder, path):
                # take the stale lock over: move it aside first, so that two takers cannot both win
                aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
                with contextlib.suppress(FileNotFoundError):
                    os.replace(path, aside)
                    os.unlink(aside)
                continue
            who = (f"process {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')} "
                   f"({holder.get('command')})") if holder else "another process"
            raise UserError(f"{target}: {who} is writing it (lock {path}); wait for it to finish, or delete the "
                            "lock file if that process is gone")
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    else:
        raise UserError(f"{target}: could not take the lock {path} (other processes keep taking it)")
    try:
        yield path
    finally:
        if (_read_lock(path) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file ``.<name>.tmp-<pid>-<random>`` next to ``target`` and rename it over ``target``
    when closed cleanly. Temporaries left by a killed writer of the same target are removed first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        kill_point(f"atomic_file:{target.name}")
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
