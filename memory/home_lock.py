"""The writer lock of an embedded memory home: one writing process at a time.

Embedded Chroma (``chromadb.PersistentClient``) is not safe for two writing processes on one folder, so a
writable ``Memory`` on an embedded home holds an exclusive OS file lock on ``HOME/writer.lock`` for its
lifetime (``filelock``: ``flock`` on POSIX, ``LockFileEx`` on Windows). The OS drops it when the process
ends, however it ends — ``kill -9`` never leaves a stale lock. Beside it, ``HOME/writer.json`` names the
holder (pid, host, command line, since) so that a refused process can say who holds the home; it is
informational only (a stale one left by a killed process is simply overwritten).

An OS lock belongs to the process, and a second ``flock`` on the same file from the same process would
refuse it: several ``Memory`` objects of one process on one home (tests, the scenario runner) share one
lock through the process-wide registry below, with a reference count. The registry is module state on
purpose: what it mirrors — which locks this process holds — is process state. A forked child starts
with an empty registry (``filelock`` closes its inherited descriptors), so it is a separate process here too.

:class:`TurnOwner`: every writable ``Memory`` (with a Chroma server several processes may write) also
holds a lock of its own, ``HOME/writers/<id>.lock``, and tags its in-flight turns in the crash journal
with that id, so that recovery at start-up finishes only the turns of writers that are gone — never the
turn another live process is in the middle of.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from memory.errors import HomeInUse, StoreError

__all__ = ["LOCK_NAME", "HOLDER_NAME", "OWNERS_DIR", "TurnOwner", "WriterLease", "acquire_writer", "holder", "owner_alive"]

log = logging.getLogger(__name__)

LOCK_NAME = "writer.lock"
HOLDER_NAME = "writer.json"
OWNERS_DIR = "writers"


@dataclass
class _Held:
    lock: Any  # filelock.FileLock
    count: int


_registry: dict[str, _Held] = {}  # realpath of the home → the lock this process holds on it
_registry_lock = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_registry.clear)


class WriterLease:
    """One ``Memory``'s share of its home's writer lock; :meth:`release` once (later calls do nothing)."""

    def __init__(self, home: Path, key: str) -> None:
        self.home, self._key, self._released = home, key, False

    def release(self) -> None:
        with _registry_lock:
            if self._released:
                return
            self._released = True
            held = _registry.get(self._key)
            if held is None:  # e.g. released in a forked child: nothing of ours to let go
                return
            held.count -= 1
            if held.count > 0:
                return
            del _registry[self._key]
            try:
                (self.home / HOLDER_NAME).unlink(missing_ok=True)  # before the release: never a fresh holder's file
            except OSError:
                log.warning("could not remove %s", self.home / HOLDER_NAME, exc_info=True)
            held.lock.release(force=True)


def acquire_writer(home: Path) -> WriterLease:
    """This process's share of the writer lock of ``home`` (which must exist).

    Raises :class:`HomeInUse` at once (never waits) when another process holds it.
    """
    from filelock import Timeout

    key = os.path.realpath(home)
    with _registry_lock:
        held = _registry.get(key)
        if held is None:
            lock = _os_lock(home / LOCK_NAME)
            try:
                lock.acquire()
            except Timeout:
                raise HomeInUse(_in_use_message(home)) from None
            except OSError as exc:
                raise StoreError(f"cannot lock the memory home {home} for writing ({exc}); it needs a local file "
                                 "system with OS file locks, or set chroma_url to use a Chroma server") from exc
            _write_holder(home)
            held = _registry[key] = _Held(lock, 0)
        held.count += 1
    return WriterLease(home, key)


def _os_lock(path: Path) -> Any:
    from filelock import FileLock

    # thread_local=False: a Memory may be closed by another thread than the one that opened it.
    # fallback_to_soft=False: a lock file without an OS lock would outlive a killed process.
    return FileLock(str(path), timeout=0, thread_local=False, fallback_to_soft=False, preserve_lock_file=True)


class TurnOwner:
    """The id one writable ``Memory`` tags its journal entries with; alive while its OS lock is held."""

    def __init__(self, home: Path) -> None:
        import uuid

        self.id = uuid.uuid4().hex
        folder = home / OWNERS_DIR
        self._path = folder / f"{self.id}.lock"
        try:
            folder.mkdir(exist_ok=True)
            self._lock = _os_lock(self._path)
            self._lock.acquire()
        except OSError as exc:
            raise StoreError(f"cannot create the writer tag {self._path} ({exc}); check that {home} is writable") from exc

    def release(self) -> None:
        self._lock.release(force=True)
        self._path.unlink(missing_ok=True)


def owner_alive(home: Path, owner_id: str) -> bool:
    """Whether the ``Memory`` tagged ``owner_id`` still runs (in this process or another); a dead one's tag is
    removed. An OS lock is exclusive even within one process, so a live owner here refuses us too."""
    from filelock import Timeout

    path = home / OWNERS_DIR / f"{owner_id}.lock"
    if not path.exists():
        return False
    lock = _os_lock(path)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    lock.release(force=True)
    path.unlink(missing_ok=True)
    return False


def holder(home: Path) -> dict[str, Any] | None:
    """What ``HOME/writer.json`` says about the process holding the home (None if absent or unreadable)."""
    try:
        data = json.loads((home / HOLDER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_holder(home: Path) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:500],
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = home / f".{HOLDER_NAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp, home / HOLDER_NAME)  # atomic: a reader never sees half a file
    except OSError:
        log.warning("could not write %s; a refused process will not be able to name this one", home / HOLDER_NAME,
                    exc_info=True)


def _in_use_message(home: Path) -> str:
    info = holder(home)
    who = "another process"
    if info:
        who = f"process {info.get('pid')} on {info.get('host')} ({info.get('command') or 'unknown command'!s}, " \
              f"since {info.get('since')})"
    return (f"the memory home {home} is open for writing by {who}. Embedded Chroma allows one writing process per "
            "home: close that process first, or open this one read-only (Memory(config, read_only=True); "
            "`pllm memory show`/`export` do), or run a Chroma server and set chroma_url (PLLM_CHROMA_URL) so that "
            "several processes can write.")
