"""Several processes (and several ``Memory`` objects) on one memory home, as an operator runs pllm.

Real processes (:mod:`tests.memory.peer`, started with ``subprocess``), the real embedded Chroma, the
real SQLite files. What is checked is what a user would notice: a second writer is refused with a
message naming the first one and nothing stored changes; a killed writer never locks the home for
good; a read-only reader sees the writer's facts and turns as they are written and cannot write; two
writers racing on one user never leave two current values of a functional relation; a locked database
is a pllm error that says what to do; objects sharing a home see each other's writes (graph, lexical
index, forget).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from memory import (
    FactSuperseded,
    HomeInUse,
    ManualClock,
    Memory,
    MemoryConfig,
    ReadOnlyMemory,
    StoreError,
    SystemClock,
    utc,
)
from memory.graph import KnowledgeGraph
from tests.memory.peer import Peer

T0 = utc(2024, 5, 1, 9, 0)


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()


def stored(mem: Memory, user: str) -> tuple[Any, ...]:
    """Everything a user could read back about ``user``, from SQLite and from Chroma."""
    return (mem.episodes(user), mem.facts(user, include_superseded=True), mem.episodic.ids(user),
            mem.semantic.ids(user), mem.users())


def current(mem: Memory, user: str, relation: str) -> list[str]:
    return [f.object for f in mem.facts(user, relation=relation)]


# ------------------------------------------------------------------------------- the writer lock


def test_a_second_writing_process_is_refused_naming_the_first_and_nothing_changes(tmp_path: Path, embedder,
                                                                                 peer: Peer) -> None:
    home = tmp_path / "home"
    with Memory(MemoryConfig(home=home), embedder=embedder, clock=ManualClock(T0)) as mem:
        mem.remember("ann", "I live in Oslo")
        before, files = stored(mem, "ann"), sorted(p.name for p in home.iterdir())

        refused = peer.send(op="open", home=str(home))
        assert refused["error"] == "HomeInUse"
        assert f"process {os.getpid()}" in refused["message"]  # who holds it
        assert "read-only" in refused["message"] and "chroma_url" in refused["message"]  # what to do
        assert stored(mem, "ann") == before and sorted(p.name for p in home.iterdir()) == files
        mem.remember("ann", "I like tea")  # the holder carries on
    assert not (home / "writer.json").exists()

    assert "pid" in peer.ok(op="open", home=str(home))  # released on close: the other process may write now
    assert peer.ok(op="facts", user="ann") == [["likes", "tea"], ["lives_in", "Oslo"]]


def test_a_killed_writer_never_leaves_the_home_locked(tmp_path: Path, embedder, peer: Peer) -> None:
    home = tmp_path / "home"
    peer.ok(op="open", home=str(home))
    with pytest.raises(HomeInUse, match=f"process {peer.pid} "):
        Memory(MemoryConfig(home=home), embedder=embedder)
    os.kill(peer.pid, signal.SIGKILL)  # no close, no atexit: only the OS can let go of the lock
    peer.proc.wait(timeout=30)
    with Memory(MemoryConfig(home=home), embedder=embedder, clock=ManualClock(T0)) as mem:
        mem.remember("bo", "I live in Lima")
        assert current(mem, "bo", "lives_in") == ["Lima"]


# ---------------------------------------------------------------------------------- read-only


def test_a_read_only_memory_in_another_process_follows_the_writer_and_cannot_write(tmp_path: Path, embedder,
                                                                                    peer: Peer) -> None:
    home, clock = tmp_path / "home", ManualClock(T0)
    with Memory(MemoryConfig(home=home), embedder=embedder, clock=clock) as mem:
        mem.remember("ann", "I live in Oslo")
        mem.remember("ann", "My locker code is QX7731")
        peer.ok(op="open", home=str(home), read_only=True)  # while the writer holds the home
        assert peer.ok(op="facts", user="ann") == [["lives_in", "Oslo"]]
        assert "My locker code is QX7731" in [e["text"] for e in peer.ok(op="recall", user="ann", query="QX7731")]

        clock.advance(timedelta(days=3))
        mem.remember("ann", "I moved to Bergen")
        mem.remember("ann", "The garage code is ZK4410")
        assert peer.ok(op="facts", user="ann") == [["lives_in", "Bergen"]]  # its graph noticed the writes
        hits = peer.ok(op="recall", user="ann", query="ZK4410")
        garage = [e for e in hits if e["text"] == "The garage code is ZK4410"]
        assert garage and "bm25" in garage[0]["sources"]  # and so did its lexical index

        refused = peer.send(op="remember", user="ann", text="I moved to Rome")
        assert refused["error"] == "ReadOnlyMemory" and "read-only" in refused["message"]
        assert current(mem, "ann", "lives_in") == ["Bergen"] and len(mem.episodes("ann")) == 4


def test_read_only_mode_refuses_every_write_and_a_missing_home(tmp_path: Path, embedder) -> None:
    home = tmp_path / "home"
    with pytest.raises(StoreError, match="no pllm memory"):
        Memory(MemoryConfig(home=home), embedder=embedder, read_only=True)
    assert not home.exists()  # looking created nothing
    with Memory(MemoryConfig(home=home), embedder=embedder, clock=ManualClock(T0)) as writer:
        writer.remember("cy", "I live in Quito")
        document = writer.export("cy")
        with Memory(MemoryConfig(home=home), embedder=embedder, read_only=True) as reader:  # no lock needed
            for write in (lambda: reader.remember("cy", "I moved to Cusco"), lambda: reader.forget("cy"),
                          lambda: reader.import_(document, user_id="cy2"), lambda: reader.consolidate("cy")):
                with pytest.raises(ReadOnlyMemory, match="opened read-only"):
                    write()
            assert current(reader, "cy", "lives_in") == ["Quito"] and reader.export("cy")["user_id"] == "cy"
        assert stored(writer, "cy")[0] == writer.episodes("cy") and current(writer, "cy", "lives_in") == ["Quito"]


# ------------------------------------------------------------------------- SQLite between writers


def test_two_processes_racing_on_one_users_city_leave_exactly_one_current_value(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite"
    KnowledgeGraph(path, SystemClock()).close()  # the log exists before both writers start
    peers, n = [Peer(), Peer()], 120
    try:
        start_at = time.time() + 1.0
        for tag, p in zip("AB", peers):
            p.post(op="hammer", path=str(path), user="u", tag=tag, n=n, start_at=start_at)
        replies = [p.reply() for p in peers]
    finally:
        for p in peers:
            p.close()
    assert replies == [{"ok": {"done": n}}] * 2  # never a raw "database is locked"

    with KnowledgeGraph(path, SystemClock()) as kg:
        assert len(kg.facts("u", relation="lives_in")) == 1
        holder = None  # walk the log: every new value closes the value that was current just before it
        values = []
        for entry in kg.history("u", "u", "lives_in"):
            if entry.op == "supersede":
                assert holder is not None and entry.fact.id == holder.id, "a supersede closed a value that was not current"
                holder = None
            elif entry.op == "assert":
                assert holder is None, f"{entry.fact.object} was asserted while {holder.object} was still current"
                holder = entry.fact
                values.append(entry.fact.object)
        assert len(values) == 2 * n and {v[:5] for v in values} == {"CityA", "CityB"}
        assert [f.id for f in kg.facts("u", relation="lives_in")] == [holder.id]


def test_a_write_blocked_past_the_busy_timeout_is_a_store_error_that_says_what_to_do(tmp_path: Path, embedder) -> None:
    home = tmp_path / "home"
    config = MemoryConfig(home=home, busy_timeout_s=0.5)
    with Memory(config, embedder=embedder, clock=ManualClock(T0)) as mem:
        mem.remember("di", "I live in Oslo")
        before = stored(mem, "di")
        other = sqlite3.connect(config.sqlite_path, isolation_level=None, check_same_thread=False)  # another process's long transaction
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="locked by another process.*busy_timeout_s"):
                mem.remember("di", "I moved to Rome")
            assert stored(mem, "di") == before

            threading.Timer(0.2, other.execute, args=("COMMIT",)).start()  # one that ends within the timeout
            assert isinstance(mem.remember("di", "I moved to Rome").events[0], FactSuperseded)
        finally:
            if other.in_transaction:
                other.execute("ROLLBACK")
            other.close()
        assert current(mem, "di", "lives_in") == ["Rome"]


# --------------------------------------------------------------------- objects sharing one home


def test_memories_sharing_a_home_in_one_process_see_each_others_writes(tmp_path: Path, embedder, peer: Peer) -> None:
    home, clock = tmp_path / "home", ManualClock(T0)
    a = Memory(MemoryConfig(home=home), embedder=embedder, clock=clock)
    b = Memory(MemoryConfig(home=home), embedder=embedder, clock=clock)  # same process: shares the writer lock
    a.remember("kim", "I live in Oslo")
    a.recall("kim", "where do I live?")  # a's graph, lexical index and summaries are now cached
    clock.advance(timedelta(days=1))
    b.remember("kim", "I moved to Lima")
    clock.advance(timedelta(days=1))
    moved = a.remember("kim", "I moved to Quito").events  # a must plan against b's write, not its own cache
    assert [(e.old.object, e.new.object) for e in moved if isinstance(e, FactSuperseded)] == [("Lima", "Quito")]
    assert current(a, "kim", "lives_in") == current(b, "kim", "lives_in") == ["Quito"]

    b.remember("kim", "The locker code is ZEBRA42")
    locker = [e for e in a.recall("kim", "ZEBRA42").episodes if "ZEBRA42" in e.text]
    assert locker and "bm25" in locker[0].sources  # a's lexical index noticed b's turn

    b.forget("kim")
    assert a.facts("kim") == [] and a.recall("kim", "ZEBRA42").episodes == []  # a shows nothing forgotten

    a.close()
    assert peer.send(op="open", home=str(home))["error"] == "HomeInUse"  # b still holds the home
    b.close()
    assert "pid" in peer.ok(op="open", home=str(home))


def test_start_up_recovery_leaves_alone_the_turn_of_a_writer_that_still_runs(tmp_path: Path, embedder) -> None:
    from memory import Episode
    from memory.journal import Intent

    home, clock = tmp_path / "home", ManualClock(T0)
    a = Memory(MemoryConfig(home=home), embedder=embedder, clock=clock)
    a.remember("gus", "I live in Oslo")
    # a's next turn, half done: journaled and written to Chroma, its SQLite transaction not committed yet
    half = Episode(user_id="gus", session_id="default", role="user", text="I moved to Lima", at=T0, recorded_at=T0)
    a._journal.begin(Intent(half.id, "gus", (half.id,), (), (), a._owner.id))
    a.episodic.add([half])
    with Memory(MemoryConfig(home=home), embedder=embedder, clock=clock) as b:  # a second writer starts meanwhile
        assert half.id in b.episodic.ids("gus")  # it did not undo a turn that a is still writing
    a.close()  # a goes away with the turn unfinished (as if it had died)
    with Memory(MemoryConfig(home=home), embedder=embedder, clock=clock) as c:
        assert half.id not in c.episodic.ids("gus") and c._journal.pending() == []  # now it is undone
        assert [e.text for e in c.episodes("gus")] == ["I live in Oslo"]
