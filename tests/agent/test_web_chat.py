"""The web chat of ``pllm serve`` in a real browser: headless Chromium (the system's, from Debian's ``chromium``
package; Playwright downloads nothing) drives the page against the real server over the real stack.

Skips when Playwright or a Chromium binary is missing: ``apt-get install chromium`` (``.ci/run`` does it).
``PLLM_CHROMIUM=/path/to/chromium`` picks another binary.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.stacks import make_stack  # noqa: F401 - a fixture

NO_CHROMIUM = "no Chromium: apt-get install chromium (the web-chat test drives the system's Chromium headless)"
REPLY_TIMEOUT_MS = 45_000  # one turn on the real local model, CPU only (a few seconds normally)


def chromium_path() -> str | None:
    """The system Chromium: the real binary behind Debian's /usr/bin/chromium wrapper script first."""
    candidates = [os.environ.get("PLLM_CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser"), shutil.which("google-chrome")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server_url(make_stack) -> Iterator[str]:  # noqa: F811 - the fixture
    """The real app (``create_app`` over a real stack) served by uvicorn on a free loopback port, in a thread."""
    import uvicorn

    from agent.serve import create_app

    app = create_app(make_stack())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="web-chat-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture()
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    exe = chromium_path()
    if exe is None:
        pytest.skip(NO_CHROMIUM)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True)
        try:
            yield b
        finally:
            b.close()


def say(page, text: str, replies_before: int) -> None:
    """Type ``text``, send it, and wait until its streamed reply is complete."""
    page.fill("#message", text)
    page.click("#send")
    page.wait_for_function(
        "n => document.querySelectorAll('#messages .msg.assistant:is([data-state=done], [data-state=error])').length > n",
        arg=replies_before, timeout=REPLY_TIMEOUT_MS)
    last = page.locator("#messages .msg.assistant").last
    assert last.get_attribute("data-state") == "done", page.inner_text("#error")


@pytest.mark.slow
def test_web_chat_shows_a_superseded_fact(server_url: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.set_default_timeout(15_000)
    page.goto(server_url + "/")
    page.wait_for_selector("#health[data-state=ok]")

    page.fill("#new-user", "dana")
    page.press("#new-user", "Enter")
    assert page.input_value("#user-select") == "dana"
    assert page.inner_text("#current-user") == "dana"

    page.fill("#new-user", "ops/dana")  # not a user id: said so at once, and dana stays the active user
    page.press("#new-user", "Enter")
    assert "is not valid" in page.inner_text("#error") and "letters, digits" in page.inner_text("#error")
    assert page.inner_text("#current-user") == "dana"
    page.click("#error")  # dismissed
    assert page.locator("#error").is_hidden()

    say(page, "I live in Oslo.", 0)
    first = page.locator("#messages .msg.assistant").first
    assert first.inner_text().strip(), "the first reply is empty"
    assert int(first.get_attribute("data-tokens") or 0) >= 1, "the reply did not stream"
    assert "dana" in [o.get_attribute("value") for o in page.locator("#user-select option").all()]

    say(page, "I moved to Bergen.", 1)
    # The turn's own change events, under the reply that caused them.
    turn = page.locator("#messages .msg.assistant").last.locator(".turn-events li.event[data-kind=FactSuperseded]")
    assert "Oslo" in turn.inner_text() and "Bergen" in turn.inner_text()

    # The panel, refreshed after the turn: Bergen current, Oslo struck through with its validity span.
    page.wait_for_selector("#facts-current li.fact[data-status=current]:has-text('Bergen')")
    past = page.locator("#facts-past li.fact:has-text('Oslo')")
    past.wait_for()
    assert past.get_attribute("data-status") == "superseded"
    assert past.locator("del").count() == 1
    decoration = past.locator(".fact-text").evaluate("e => getComputedStyle(e).textDecorationLine")
    assert "line-through" in decoration
    assert "→" in past.locator(".validity").inner_text()
    assert "Oslo" not in page.inner_text("#facts-current")
    events = page.locator("#events li.event[data-kind=FactSuperseded]")
    events.first.wait_for()
    assert "Oslo" in events.first.inner_text() and "Bergen" in events.first.inner_text()
    # The graph: a current edge to Bergen and a dashed, superseded one to Oslo.
    assert page.locator("#graph svg g.edge[data-current=true][data-target=Bergen]").count() == 1
    assert page.locator("#graph svg g.edge[data-current=false][data-target=Oslo] path").get_attribute(
        "stroke-dasharray")
    assert page.locator("#model-state").is_visible()
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    assert not page_errors, page_errors

    shot = tmp_path / "web_chat.png"
    page.screenshot(path=shot)
    assert shot.is_file() and shot.stat().st_size > 0

    # An API error (an invalid user id) shows its error.message, as text: nothing in it becomes markup.
    page.fill("#new-user", "<b>x")
    page.press("#new-user", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "<b>x" in page.inner_text("#error") and "not valid" in page.inner_text("#error")
    assert page.locator("#error b").count() == 0
