"""``pllm chat`` where a terminal and signals matter: Ctrl-C mid-reply, line history, errors mid-session;
and the per-turn progress of ``pllm scenario run``."""

from __future__ import annotations

import io
import os
import re
import select
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from rich.console import Console
from rich.text import Text

from agent.cli_chat import ChatLoop
from tests.agent.stacks import make_stack  # noqa: F401 - a fixture

REPO = Path(__file__).resolve().parents[2]


class Typed:
    """A LineReader that types ``lines`` and then Ctrl-D; ``before_read`` runs before each read."""

    def __init__(self, lines: list[str], before_read=None) -> None:
        self.lines, self.before_read = list(lines), before_read

    def read(self, prompt: str) -> str:
        if self.before_read is not None:
            self.before_read(len(self.lines))
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)

    ask = read

    def clear_history(self) -> None:
        pass


class CtrlCOnFirstReplyText(io.StringIO):
    """Console output that presses Ctrl-C (a real SIGINT to this process) once the first reply has begun."""

    fired = False

    def write(self, s: str) -> int:
        n = super().write(s)
        if not self.fired and "pllm › " in self.getvalue() and s.strip() and "pllm" not in s:
            self.fired = True
            signal.raise_signal(signal.SIGINT)
        return n


class TokensPerReply(BaseCallbackHandler):
    """Counts the tokens the model generated for each reply."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_chat_model_start(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self.counts.append(0)

    def on_llm_new_token(self, token: str, **kwargs) -> None:  # noqa: ANN003
        self.counts[-1] += 1


def test_ctrl_c_stops_the_reply_frees_the_model_and_keeps_the_session(tmp_path: Path, local_model, embedder) -> None:
    from agent.settings import Settings
    from agent.stack import build_stack

    stack = build_stack(Settings(home=tmp_path, max_new_tokens=48), local=local_model, embedder=embedder)
    tokens = TokensPerReply()
    stack.agent.chat_model.callbacks = [tokens]
    lock_free: list[bool] = []

    def probe_lock(lines_left: int) -> None:  # at the prompt after the interrupt: can another thread generate?
        if lines_left == 1:
            def grab() -> None:
                got = local_model.lock.acquire(timeout=5)
                lock_free.append(got)
                if got:
                    local_model.lock.release()
            t = threading.Thread(target=grab)
            t.start()
            t.join()

    out = CtrlCOnFirstReplyText()
    reader = Typed(["Tell me a long story about a dragon.", "I live in Porto."], before_read=probe_lock)
    users_handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    try:
        ChatLoop(stack, "sam", "s1", reader, Console(file=out, width=200)).run()
        episodes = [e.text for e in stack.memory.episodes("sam")]
    finally:
        stack.close()
    text = out.getvalue()
    assert "interrupted" in text and "this turn was not added to memory" in text
    assert lock_free == [True]  # the generation thread let go of the model
    assert len(tokens.counts) == 2 and tokens.counts[0] < 12  # generation stopped, not just the printing
    assert "memory + lives in: Porto" in text  # the session went on with the next line
    assert "I live in Porto." in episodes and "Tell me a long story about a dragon." not in episodes
    assert signal.getsignal(signal.SIGINT) is users_handler  # Ctrl-C is the user's again


def test_any_pllm_error_mid_session_is_shown_and_the_session_goes_on(tmp_path: Path, embedder) -> None:
    # A chat model that fails the way the local model can (a fake: a real cache failure cannot be
    # provoked mid-session).
    from langchain_core.language_models import BaseChatModel

    from agent.settings import Settings
    from agent.stack import build_stack
    from editing import ModelCacheError

    class Broken(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "broken"

        def _generate(self, *args, **kwargs):  # noqa: ANN002, ANN003
            raise ModelCacheError("the converted model at /x is incomplete; delete it and run again")

    stack = build_stack(Settings(home=tmp_path), chat_model=Broken(), embedder=embedder)
    out, err = io.StringIO(), io.StringIO()
    try:
        ChatLoop(stack, "sam", "s1", Typed(["Hello", "/memory"]), Console(file=out, width=200),
                 Console(file=err, width=200)).run()
    finally:
        stack.close()
    assert err.getvalue() == "error: the converted model at /x is incomplete; delete it and run again\n"
    assert "memory of sam" in out.getvalue()  # the next line (/memory) still ran


def _read_until(fd: int, buf: bytearray, pattern: bytes, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if re.search(pattern, bytes(buf), re.S):
            return True
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                return bool(re.search(pattern, bytes(buf), re.S))
            buf.extend(chunk)
    return False


@pytest.mark.slow
def test_on_a_terminal_ctrl_c_stops_a_reply_arrows_recall_history_and_ctrl_c_ends(tmp_path: Path, model_cache_dir: Path,
                                                                                 local_model) -> None:
    import pty

    home = tmp_path / "home"
    env = {**os.environ, "PLLM_HOME": str(home), "PLLM_MODEL_CACHE": str(model_cache_dir), "TERM": "xterm",
           "COLUMNS": "120", "LINES": "40",
           "PROMPT_TOOLKIT_NO_CPR": "1"}  # no terminal emulator here to answer cursor-position queries
    pid, fd = pty.fork()
    if pid == 0:  # the child: pllm chat with this pty as its controlling terminal
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "agent.cli", "chat", "-u", "sam", "--max-new-tokens", "200"], env)
    buf = bytearray()
    try:
        assert _read_until(fd, buf, rb"sam\S* \xe2\x80\xba", 180), buf.decode(errors="replace")
        os.write(fd, b"Tell me a long story about a dragon.\r")
        assert _read_until(fd, buf, rb"pllm\S* \xe2\x80\xba \w+ \w+", 120), buf.decode(errors="replace")
        os.write(fd, b"\x03")  # Ctrl-C as the terminal sends it: SIGINT to the foreground process
        assert _read_until(fd, buf, rb"interrupted.*sam\S* \xe2\x80\xba", 60), buf.decode(errors="replace")
        mark = len(buf)
        os.write(fd, b"\x1b[A")  # arrow up: the last line comes back for editing
        recalled = _read_until(fd, buf, rb"sam\S* \xe2\x80\xba.*long story about a dragon", 20)
        assert recalled, buf[mark:].decode(errors="replace")
        os.write(fd, b"\x03")  # Ctrl-C at the prompt ends the session
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _read_until(fd, buf, rb"(?!)", 0.5)
        os.close(fd)
    text = buf.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "Traceback" not in text and "WARNING" not in text, text
    assert "Tell me a long story about a dragon." in (home / "history" / "sam").read_text()


# ------------------------------------------------------------------------------------------ scenario progress

TWO_SESSIONS = """\
name: "[x] progress"
user: sam
sessions:
  - at: "2026-01-05T09:00:00"
    turns:
      - user: "I live in Oslo."
      - user: "I like tea."
  - at: "2026-02-05T09:00:00"
    turns:
      - user: "Where do I live?"
"""


def test_scenario_progress_shows_turns_and_where_on_a_terminal_only(tmp_path: Path) -> None:
    from agent.scenarios.cli import TurnProgress
    from agent.scenarios.format import parse_scenario

    sc = parse_scenario(TWO_SESSIONS)
    term = Console(file=io.StringIO(), force_terminal=True, width=120)
    with TurnProgress([sc], term) as progress:
        progress.start(sc)
        progress.turn_done(sc)
        progress.turn_done(sc)  # session 1 done: the next turn is in session 2
        progress.progress.refresh()
        shown = Text.from_ansi(term.file.getvalue()).plain
    assert "[x] progress · session 2/2" in shown and "2/3" in shown and "turns" in shown

    pipe = Console(file=io.StringIO(), width=120)  # not a terminal: CI logs get the results only
    with TurnProgress([sc], pipe) as progress:
        progress.start(sc)
        progress.turn_done(sc)
        progress.print("result line")
    assert pipe.file.getvalue() == "result line\n"


def test_good_and_bad_rate_the_last_streamed_reply(make_stack) -> None:
    stack = make_stack()
    out, err = io.StringIO(), io.StringIO()
    ChatLoop(stack, "sam", "s1", Typed(["/good", "Recommend a tea.", "/good", "/bad"]), Console(file=out, width=200),
             Console(file=err, width=200)).run()
    assert "no stored reply to rate yet" in err.getvalue()  # /good before any reply: shown, the session goes on
    (reply,) = [e for e in stack.memory.episodes("sam") if e.role == "assistant"]
    assert [(f.episode_id, f.value) for f in stack.memory.feedback("sam")] == [(reply.id, 1), (reply.id, -1)]
    assert "you liked that reply" in out.getvalue() and "you disliked that reply" in out.getvalue()
