"""The manual clock of scenarios and tests: reads are strictly increasing, and it never goes back."""

from __future__ import annotations

import threading

import pytest

from memory import ManualClock, utc


def test_reads_from_another_thread_do_not_stop_a_session_from_starting_at_the_clocks_instant() -> None:
    clock = ManualClock(utc(2026, 1, 5, 9))
    reads = []
    reader = threading.Thread(target=lambda: reads.extend(clock.now() for _ in range(3)))  # e.g. a worker thread
    reader.start()
    reader.join()
    clock.set(utc(2026, 1, 5, 9))  # the first session starts at the instant the clock was built with
    after = clock.now()
    assert reads == sorted(reads) and after > reads[-1]  # still strictly after every earlier read
    clock.set(utc(2026, 1, 6, 9))
    assert clock.now() == utc(2026, 1, 6, 9)
    with pytest.raises(ValueError, match="cannot go back in time"):
        clock.set(utc(2026, 1, 5, 23))
