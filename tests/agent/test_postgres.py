"""Conversation threads in a real PostgreSQL server (PLLM_POSTGRES_URL): they survive a restart, stay apart per
user, are exported and forgotten with the user; a wrong URL says what to do.

The server is started for this module on loopback (``tests/agent/pg_server.py``: ``initdb`` + ``pg_ctl``, about
a second); each test gets its own database on it. Without the PostgreSQL binaries the module is skipped, saying
which one is missing.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from agent import CheckpointerUnavailable
from agent.graph import checkpoint_serde, close_checkpointer, make_checkpointer
from agent.threads import PostgresThreadRegistry, ThreadRegistry, thread_id_for
from memory.retrieval import Recollection
from tests.agent.pg_server import PostgresServer, PostgresUnavailable, _free_port, start
from tests.agent.stacks import make_stack  # noqa: F401 - fixture

_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
_numbers = itertools.count()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = start()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server for these tests: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def postgres_url(pg_server: PostgresServer) -> str:
    """A fresh, empty database on the module's server (pllm creates its tables)."""
    return pg_server.create_database(f"pllm_{next(_numbers)}")


def _rows(url: str, thread_id: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table} WHERE thread_id = %s",  # noqa: S608 - constant
                                    (thread_id,)).fetchone()[0] for table in _TABLES}


def _texts(state: dict) -> list[str]:
    return [str(m.content) for m in state.get("messages") or []]


@pytest.mark.slow  # chat turns with the real model: the three take ~25 s together
def test_a_conversation_survives_a_restart_with_its_checkpoints_in_postgres(make_stack, postgres_url: str,  # noqa: F811
                                                                            tmp_path: Path) -> None:
    home = tmp_path / "home"
    stack = make_stack(home=home, postgres_url=postgres_url)
    assert type(stack.agent.graph.checkpointer).__name__ == "PostgresSaver"
    assert not (home / "checkpoints.sqlite").exists()  # the threads are not in SQLite
    assert not (home / "threads.sqlite").exists()  # nor is the registry of who owns them
    first = stack.agent.chat("ana", "I live in Lisbon.", session_id="s1")
    second = stack.agent.chat("ana", "Which city do I live in?", session_id="s1")
    stack.close()

    restarted = make_stack(home=home, postgres_url=postgres_url)
    state = restarted.agent.last_turn("ana", "s1")
    assert _texts(state) == ["I live in Lisbon.", first.reply, "Which city do I live in?", second.reply]
    # pllm's own state types come back as themselves: the saver has pllm's serializer
    assert isinstance(state["recollection"], Recollection)
    rows = _rows(postgres_url, thread_id_for("ana", "s1"))
    assert rows["checkpoints"] >= 2 and rows["checkpoint_blobs"] >= 1, rows
    restarted.agent.chat("ana", "Thanks!", session_id="s1")  # the thread goes on where it was
    assert _texts(restarted.agent.last_turn("ana", "s1"))[:4] == _texts(state)
    assert len(restarted.agent.last_turn("ana", "s1")["messages"]) == 6


@pytest.mark.slow  # chat turns with the real model: the three take ~25 s together
def test_two_users_threads_stay_apart(make_stack, postgres_url: str) -> None:  # noqa: F811
    agent = make_stack(postgres_url=postgres_url).agent
    agent.chat("ana", "My dog is called Rex.", session_id="s1")
    agent.chat("bob", "I play the cello.", session_id="s1")  # the same session id
    assert _texts(agent.last_turn("ana", "s1"))[0] == "My dog is called Rex."
    assert _texts(agent.last_turn("bob", "s1"))[0] == "I play the cello."
    assert all("cello" not in t for t in _texts(agent.last_turn("ana", "s1")))
    assert all("Rex" not in t for t in _texts(agent.last_turn("bob", "s1")))
    with psycopg.connect(postgres_url) as conn:
        threads = {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    assert threads == {thread_id_for("ana", "s1"), thread_id_for("bob", "s1")}


@pytest.mark.slow  # chat turns with the real model: the three take ~25 s together
def test_export_and_forget_reach_the_threads_in_postgres(make_stack, postgres_url: str) -> None:  # noqa: F811
    agent = make_stack(postgres_url=postgres_url).agent
    agent.chat("ana", "I live in Lisbon.", session_id="s1")
    agent.chat("ana", "I work as a nurse.", session_id="s2")
    agent.chat("bob", "I live in Oslo.", session_id="s1")

    sessions = agent.export("ana")["parts"]["threads"]["sessions"]
    assert [s["session_id"] for s in sessions] == ["s1", "s2"]
    assert sessions[0]["messages"][0]["data"]["content"] == "I live in Lisbon."
    assert sessions[1]["messages"][0]["data"]["content"] == "I work as a nurse."

    assert agent.forget("ana")["threads"] == 2
    for session in ("s1", "s2"):
        assert _rows(postgres_url, thread_id_for("ana", session)) == dict.fromkeys(_TABLES, 0)
        assert agent.last_turn("ana", session) == {}
    assert _rows(postgres_url, thread_id_for("bob", "s1"))["checkpoints"] >= 1
    assert _texts(agent.last_turn("bob", "s1"))[0] == "I live in Oslo."
    assert [s["session_id"] for s in agent.export("bob")["parts"]["threads"]["sessions"]] == ["s1"]


def test_every_process_on_the_database_sees_the_same_thread_registry(postgres_url: str, tmp_path: Path) -> None:
    """Two pllm processes (two homes, two machines) on one database: a thread one opens, the other lists, and a
    forget through either removes it for both — a registry on each machine's disk would miss the other's."""
    one = PostgresThreadRegistry(postgres_url, home=tmp_path / "one")
    two = PostgresThreadRegistry(postgres_url, home=tmp_path / "two")
    try:
        ana_s1 = one.open_thread("ana", "s1")
        assert two.open_thread("ana", "s2") != ana_s1
        assert one.open_thread("ana", "s1") == ana_s1  # opening again records nothing new
        one.open_thread("bob:x", "s")
        two.open_thread("bob", "x:s")  # the pair that once shared a thread
        assert [(r.user_id, r.session_id) for r in two.of_user("ana")] == [("ana", "s1"), ("ana", "s2")]
        assert [r.session_id for r in one.of_user("bob")] == ["x:s"]
        assert two.owner(ana_s1).user_id == "ana"
        assert two.remove([r.thread_id for r in two.of_user("ana")]) == 2
        assert one.of_user("ana") == [] and one.owner(ana_s1) is None
        assert [r.user_id for r in one.of_user("bob:x")] == ["bob:x"]
    finally:
        one.close()
        two.close()
    reopened = PostgresThreadRegistry(postgres_url)
    assert [r.session_id for r in reopened.of_user("bob")] == ["x:s"]  # the rows outlive the processes
    reopened.close()
    assert not list(tmp_path.rglob("threads.sqlite"))


def test_a_registry_kept_on_disk_before_moves_into_postgres_once(postgres_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    old = ThreadRegistry.under(home)
    first = old.open_thread("ana", "s1")
    old.open_thread("ana", "s2")
    old.close()
    registry = PostgresThreadRegistry(postgres_url, home=home)
    assert [r.session_id for r in registry.of_user("ana")] == ["s1", "s2"]  # no thread lost its owner
    assert not (home / "threads.sqlite").exists() and (home / "threads.sqlite.moved-to-postgres").is_file()
    registry.remove([first])  # e.g. forgotten later: the moved file must not bring it back
    registry.close()
    again = PostgresThreadRegistry(postgres_url, home=home)
    assert [r.session_id for r in again.of_user("ana")] == ["s2"]
    again.close()


def test_the_saver_serves_several_threads_at_once(postgres_url: str, tmp_path: Path) -> None:
    """A web server's threadpool shares one agent, so one saver: concurrent writes all land, none interleave."""
    from agent.lifecycle import _thread_graph
    from langchain_core.messages import HumanMessage

    saver = make_checkpointer(tmp_path, postgres_url)
    try:
        graph = _thread_graph(saver)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                config = {"configurable": {"thread_id": f"t{n}"}}
                for i in range(5):
                    graph.update_state(config, {"messages": [HumanMessage(f"{n}-{i}", id=f"{n}-{i}")]}, as_node="adapt")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert not errors, errors
        for n in range(8):
            state = graph.get_state({"configurable": {"thread_id": f"t{n}"}})
            assert [m.content for m in state.values["messages"]] == [f"{n}-{i}" for i in range(5)]
    finally:
        close_checkpointer(saver)


def test_the_saver_uses_pllms_serializer(postgres_url: str, tmp_path: Path) -> None:
    saver = make_checkpointer(tmp_path, postgres_url)
    try:
        allowed = getattr(saver.serde, "_allowed_msgpack_modules", None)
        assert allowed == getattr(checkpoint_serde(), "_allowed_msgpack_modules", None)
        assert saver.conn.kwargs["autocommit"] is True and saver.conn.kwargs["prepare_threshold"] == 0
    finally:
        close_checkpointer(saver)
    assert saver.conn.closed


@pytest.mark.parametrize("case", ["unreachable", "no such database", "malformed"])
def test_a_bad_postgres_url_says_what_to_do(make_stack, pg_server: PostgresServer, tmp_path: Path,  # noqa: F811
                                            case: str) -> None:
    url = {"unreachable": f"postgresql://pllm:s3cret@127.0.0.1:{_free_port()}/pllm",
           "no such database": pg_server.url_of("nowhere"),
           "malformed": "postgres is over there"}[case]
    home = tmp_path / "home"
    with pytest.raises(CheckpointerUnavailable) as caught:
        make_stack(home=home, postgres_url=url)
    message = str(caught.value)
    assert "PLLM_POSTGRES_URL" in message and "unset PLLM_POSTGRES_URL" in message
    assert "s3cret" not in message
    if case == "unreachable":
        assert "cannot connect" in message and "running and reachable" in message
    if case == "no such database":
        assert '"nowhere" does not exist' in message
    # nothing was left open (the memory's writer lock): the same home works at once with SQLite threads
    assert make_stack(home=home).agent.graph.checkpointer is not None



def test_processes_opening_a_fresh_database_at_the_same_moment_all_start(postgres_url: str, tmp_path: Path) -> None:
    """Replicas started together on an empty database all create pllm's tables at once; Postgres's
    ``CREATE TABLE IF NOT EXISTS`` is not safe against itself (two sessions both pass the check, and one fails
    on a duplicate type), so without a lock around the schema one of them would crash at start."""
    import threading

    from agent.graph import close_checkpointer, open_threads

    n = 6
    ready = threading.Barrier(n)
    errors: list[BaseException] = []
    opened: list[Any] = []

    def start(i: int) -> None:
        ready.wait()
        try:
            opened.append(open_threads(tmp_path / f"replica{i}", postgres_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=start, args=(i,)) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    try:
        assert not errors, [f"{type(e).__name__}: {e}" for e in errors]
        assert len(opened) == n
        opened[0][1].open_thread("ana", "s1")
        assert [r.session_id for r in opened[-1][1].of_user("ana")] == ["s1"]
    finally:
        for checkpointer, registry in opened:
            registry.close()
            close_checkpointer(checkpointer)
