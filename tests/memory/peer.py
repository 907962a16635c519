"""A second process for the multi-process tests: it opens a ``Memory`` (or a bare ``KnowledgeGraph``) on a
home and answers one JSON command per stdin line with one JSON line on stdout.

    python tests/memory/peer.py            # then: {"op": "open", "home": "...", "read_only": true} ...

Run by :mod:`tests.memory.test_processes` through :class:`Peer`; errors come back as
``{"error": "HomeInUse", "message": "..."}`` so the test sees exactly what a user of the API would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _serve() -> None:
    sys.path.insert(0, str(REPO))
    from memory import Memory, MemoryConfig, PllmMemoryError, SystemClock
    from memory.db import SqliteDb
    from memory.extraction import Candidate
    from memory.graph import KnowledgeGraph

    mem: Memory | None = None

    def hammer(path: str, user: str, tag: str, n: int, start_at: float) -> dict[str, Any]:
        """``n`` new lives_in values, each in its own BEGIN IMMEDIATE transaction, as Memory writes a turn
        (which holds the transaction ~1 ms or more, while it embeds and writes Chroma)."""
        graph = KnowledgeGraph(path, SystemClock())
        db = SqliteDb(path)
        time.sleep(max(0.0, start_at - time.time()))  # both writers start together
        for i in range(n):
            with db.transaction("write a turn") as conn:
                at = datetime.now(timezone.utc)  # inside the transaction: the log's order is the time order
                graph.apply(user, [Candidate("user", "lives_in", f"City{tag}x{i}")], episode_id=None, at=at, conn=conn)
                time.sleep(0.001)
        graph.close()
        db.close()
        return {"done": n}

    def handle(cmd: dict[str, Any]) -> Any:
        nonlocal mem
        op = cmd["op"]
        if op == "open":
            options = {"read_only": True} if cmd.get("read_only") else {}
            mem = Memory(MemoryConfig(home=Path(cmd["home"])), **options)
            return {"pid": os.getpid()}
        if op == "hammer":
            return hammer(cmd["path"], cmd["user"], cmd["tag"], cmd["n"], cmd["start_at"])
        assert mem is not None, "open first"
        if op == "remember":
            return {"id": mem.remember(cmd["user"], cmd["text"]).episode.id}
        if op == "facts":
            return sorted([f.relation, f.object] for f in mem.facts(cmd["user"]))
        if op == "recall":
            rec = mem.recall(cmd["user"], cmd["query"], k=cmd.get("k", 3))
            return [{"text": e.text, "sources": list(e.sources)} for e in rec.episodes]
        if op == "close":
            mem.close()
            return {"closed": True}
        raise ValueError(f"unknown op {op!r}")

    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply = {"ok": handle(cmd)}
        except PllmMemoryError as exc:
            reply = {"error": type(exc).__name__, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on anything unexpected
            reply = {"error": type(exc).__name__, "message": repr(exc)}
        print(json.dumps(reply), flush=True)


class Peer:
    """The parent's handle on one peer process."""

    def __init__(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=REPO)
        self.pid = self._read()["ready"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the peer process exited with {self.proc.wait()}")
        return json.loads(line)

    def post(self, **cmd: Any) -> None:
        """Send one command without waiting (several peers then work at the same time); read it with :meth:`reply`."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        """The answer to the oldest posted command: ``{"ok": ...}`` or ``{"error": class name, "message": ...}``."""
        return self._read()

    def send(self, **cmd: Any) -> dict[str, Any]:
        self.post(**cmd)
        return self.reply()

    def ok(self, **cmd: Any) -> Any:
        reply = self.send(**cmd)
        assert "ok" in reply, reply
        return reply["ok"]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


if __name__ == "__main__":
    _serve()
