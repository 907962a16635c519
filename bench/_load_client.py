"""One load client of ``bench/serve_load.py``: a user streaming its turns through the ``openai`` client.

It runs in a process of its own by default (as load tools such as wrk or locust do: the load generator does not
share the server's interpreter), or as a thread of the server's process (``--client-threads``). It reports every
event on ``out`` as it happens, so a client that dies mid-run still leaves its record:

* ``("ready", i)`` once its HTTP client is built; then it waits for ``go``;
* ``("sent", i, text)`` before each turn;
* ``("done", i, text, ttft_ms | None, turn_ms, reply)`` after each completed turn;
* ``("failed", i, message)`` for a turn that raised;
* ``("finished", i, t)`` last, always (``t``: ``time.monotonic()``, one clock for every process on the machine).

Only the ``openai`` client is imported here: a spawned client process loads nothing of pllm.
"""

from __future__ import annotations

import time
from typing import Any


def run_client(i: int, port: int, script: list[str], n_turns: int, duration_s: float | None, timeout_s: float,
               out: Any, go: Any) -> None:
    """Stream ``n_turns`` turns of ``script`` (repeated) for user ``client{i}``.

    Counted from ``go``: no turn starts after ``duration_s`` (if given) or ``timeout_s``.
    """
    try:
        from openai import OpenAI

        api = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused-on-loopback", max_retries=0,
                     timeout=max(60.0, timeout_s))
        user = f"client{i}"
        out.put(("ready", i))
        go.wait()
        last_start = time.monotonic() + min(timeout_s, duration_s if duration_s is not None else timeout_s)
        for k in range(n_turns):
            text = script[k % len(script)]
            if time.monotonic() > last_start:
                break
            out.put(("sent", i, text))
            t = time.perf_counter()
            first = None
            reply = []
            try:
                for chunk in api.chat.completions.create(model="pllm", user=user, stream=True,
                                                         messages=[{"role": "user", "content": text}]):
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.perf_counter()
                        reply.append(chunk.choices[0].delta.content)
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                out.put(("failed", i, f"{user}: {type(exc).__name__}: {exc}"))
                continue
            end = time.perf_counter()
            out.put(("done", i, text, None if first is None else (first - t) * 1000, (end - t) * 1000,
                     "".join(reply)))
    except Exception as exc:  # noqa: BLE001 - the parent reports it
        out.put(("failed", i, f"client{i} stopped: {type(exc).__name__}: {exc}"))
    finally:
        out.put(("finished", i, time.monotonic()))
