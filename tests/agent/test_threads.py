"""Thread ids are injective and opaque; owners live in the registry, which survives a restart."""

from __future__ import annotations

from pathlib import Path

from agent.threads import ThreadRegistry, thread_id_for


def test_pairs_that_used_to_collide_get_distinct_opaque_ids() -> None:
    pairs = [("bob:x", "s"), ("bob", "x:s"), ("bob", "x"), ("bo", "b:x"), ("a", "b:c"), ("a:b", "c"), ("a", "bc")]
    ids = [thread_id_for(u, s) for u, s in pairs]
    assert len(set(ids)) == len(pairs)
    assert all("bob" not in t and ":" not in t for t in ids)
    assert thread_id_for("bob", "x:s") == thread_id_for("bob", "x:s")  # stable, so a thread resumes


def test_the_registry_lists_exactly_a_users_threads_and_survives_a_restart(tmp_path: Path) -> None:
    registry = ThreadRegistry.under(tmp_path)
    mine = [registry.open_thread("bob", s) for s in ("x:s", "s2")]
    theirs = registry.open_thread("bob:x", "s")
    registry.open_thread("bob", "x:s")  # opening again records nothing new
    registry.close()
    reopened = ThreadRegistry.under(tmp_path)
    assert [(r.thread_id, r.session_id) for r in reopened.of_user("bob")] == list(zip(mine, ["x:s", "s2"]))
    assert reopened.owner(theirs).user_id == "bob:x"
    assert reopened.remove(mine) == 2 and reopened.of_user("bob") == []
    assert [r.session_id for r in reopened.of_user("bob:x")] == ["s"]
    reopened.close()
