"""The interactive loop of ``pllm chat``: reading lines, streaming replies, Ctrl-C, slash commands.

Reading: on a terminal, :mod:`prompt_toolkit` gives line editing and a per-user history file
(``HOME/history/USER``, arrow keys recall earlier lines); otherwise (a pipe, a test) lines are read
plainly, one per turn.

Ctrl-C during a reply stops that reply and returns to the prompt. The reply is generated in a LangGraph
worker thread, so a ``KeyboardInterrupt`` in the main thread could not stop it (closing the stream
waits for the running node). Instead, while a reply streams, SIGINT only sets a flag, and a LangChain
callback on the chat model raises :class:`ReplyInterrupted` at the model's next token: the generation
loop unwinds in its own thread (releasing the model's lock) and the turn ends there, before the
``remember`` step: nothing of an interrupted turn goes into memory (the conversation thread keeps the
user's message, as chat apps do). Ctrl-C or Ctrl-D at the prompt ends the session.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from langchain_core.callbacks import BaseCallbackHandler
from rich.console import Console
from rich.markup import escape

from agent.cli_common import PLLM_ERRORS, print_error

if TYPE_CHECKING:  # pragma: no cover
    from agent.stack import Stack

__all__ = ["ChatLoop", "LineReader", "PlainReader", "ReplyInterrupted", "TerminalReader", "forget_history",
           "history_path", "make_reader"]

HELP = ("/good and /bad rate my last reply, /memory shows what I know, /forget erases it, /export FILE saves it, "
        "/quit ends (so do Ctrl-D and Ctrl-C); Ctrl-C during a reply stops it.")


# ------------------------------------------------------------------------------------------ reading


class LineReader(Protocol):
    """Reads one line; raises ``EOFError`` (Ctrl-D, end of input) or ``KeyboardInterrupt`` (Ctrl-C)."""

    def read(self, prompt: str) -> str: ...

    def ask(self, question: str) -> str:
        """A one-off answer (a confirmation), kept out of the history."""
        ...

    def clear_history(self) -> None: ...


def history_path(home: Path, user_id: str) -> Path:
    """The user's line-editing history file (the user id quoted into a safe file name)."""
    return home / "history" / quote(user_id, safe="")


def forget_history(home: Path, user_id: str) -> bool:
    """Delete the user's history file (what they typed is memory too); True if there was one."""
    path = history_path(home, user_id)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


class PlainReader:
    """Lines from stdin through the rich console (pipes, tests): no editing, no history."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def read(self, prompt: str) -> str:
        return self.console.input(prompt)

    def ask(self, question: str) -> str:
        return self.console.input(question)

    def clear_history(self) -> None:
        pass


class TerminalReader:
    """prompt_toolkit line editing with the user's history file (created on the first line typed)."""

    def __init__(self, history_file: Path) -> None:
        self.history_file = history_file
        self._session = self._new_session()

    def _new_session(self) -> Any:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        self.history_file.parent.mkdir(parents=True, exist_ok=True)
        return PromptSession(history=FileHistory(str(self.history_file)))

    def read(self, prompt: str) -> str:
        from prompt_toolkit.formatted_text import ANSI

        return self._session.prompt(ANSI(_ansi(prompt)))

    def ask(self, question: str) -> str:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.formatted_text import ANSI

        return PromptSession().prompt(ANSI(_ansi(question)))  # in-memory history: answers are not kept

    def clear_history(self) -> None:
        self.history_file.unlink(missing_ok=True)
        self._session = self._new_session()  # the old session still holds the lines in memory (arrow up)


def _ansi(markup: str) -> str:
    """Rich markup → ANSI escapes, for prompt_toolkit prompts."""
    c = Console(force_terminal=True, color_system="standard", width=10_000)
    with c.capture() as cap:
        c.print(markup, end="", soft_wrap=True)
    return cap.get()


def make_reader(console: Console, home: Path, user_id: str, *, stdin_is_tty: bool) -> LineReader:
    """Line editing and history on a terminal, plain reading otherwise."""
    return TerminalReader(history_path(home, user_id)) if stdin_is_tty else PlainReader(console)


# ------------------------------------------------------------------------------------------ Ctrl-C


class ReplyInterrupted(Exception):
    """The user pressed Ctrl-C while a reply was being generated."""


class StopOnRequest(BaseCallbackHandler):
    """A LangChain callback that stops the chat model once :attr:`requested` is set.

    ``raise_error`` makes LangChain let the exception through instead of logging it; it is raised in
    the thread that runs the model, at its next token.
    """

    raise_error = True

    def __init__(self) -> None:
        self.requested = threading.Event()

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        if self.requested.is_set():
            raise ReplyInterrupted()

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        if self.requested.is_set():
            raise ReplyInterrupted()


class _NotAnError(logging.Filter):
    """LangChain logs a warning for every exception a callback raises, ours included; an interrupt the
    user asked for is not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.args, tuple) and record.args[:1] == (StopOnRequest.__name__,))


def _quiet_langchain_about_stops() -> None:
    logger = logging.getLogger("langchain_core.callbacks.manager")
    if not any(isinstance(f, _NotAnError) for f in logger.filters):
        logger.addFilter(_NotAnError())


@contextmanager
def sigint_requests(stopper: StopOnRequest) -> Iterator[None]:
    """While inside, Ctrl-C asks ``stopper`` to stop the reply; a second Ctrl-C raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if stopper.requested.is_set():
            raise KeyboardInterrupt
        stopper.requested.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------------------------------ the loop


class ChatLoop:
    """One ``pllm chat`` session of ``user_id`` on ``stack``: prompt, reply, slash commands, until the end."""

    def __init__(self, stack: "Stack", user_id: str, session_id: str, reader: LineReader, console: Console,
                 err_console: Console | None = None) -> None:
        self.stack, self.user, self.session = stack, user_id, session_id
        self.reader, self.console, self.err_console = reader, console, err_console
        self.stopper = StopOnRequest()
        _quiet_langchain_about_stops()
        model = stack.agent.chat_model
        model.callbacks = [*(model.callbacks or []), self.stopper]  # type: ignore[list-item]
        self.commands: dict[str, Callable[[str], None]] = {
            "/memory": self._show_memory, "/forget": self._forget, "/export": self._export, "/help": self._help,
            "/good": lambda _: self._rate(1), "/bad": lambda _: self._rate(-1)}

    def run(self) -> None:
        """Until /quit, Ctrl-D or Ctrl-C at the prompt."""
        self.console.print(f"[dim]{escape(self.stack.agent.describe())}. {escape(HELP)}[/]")
        prompt = f"[bold cyan]{escape(self.user)}[/] › "
        while True:
            try:
                text = self.reader.read(prompt).strip()
            except (EOFError, KeyboardInterrupt):
                self.console.print()
                return
            if text in ("/quit", "/exit"):
                return
            if text.startswith("/"):
                self._command(text)
            elif text:
                self.turn(text)

    def _command(self, text: str) -> None:
        name, _, arg = text.partition(" ")
        handler = self.commands.get(name)
        if handler is None:
            self.console.print(f"[yellow]unknown command {escape(name)}[/]; {escape(HELP)}")
            return
        try:
            handler(arg.strip())
        except PLLM_ERRORS as exc:
            print_error(exc, self.err_console)

    def turn(self, text: str) -> None:
        """One turn: stream the reply; Ctrl-C stops it; a pllm error is shown and the session goes on."""
        self.console.print("[bold green]pllm[/] › ", end="")
        reply = self.stack.agent.stream(self.user, text, session_id=self.session)
        try:
            with sigint_requests(self.stopper), closing(reply):
                for piece in reply:
                    self.console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
        except (ReplyInterrupted, KeyboardInterrupt):
            self.console.print("\n[yellow]interrupted[/] [dim](reply stopped; this turn was not added to memory)[/]")
            return
        except PLLM_ERRORS as exc:
            self.console.print()
            print_error(exc, self.err_console)
            return
        finally:
            # The model has stopped by now (its exception ended the stream, or closing it waited for it).
            self.stopper.requested.clear()
        self.console.print()
        from agent.views import events_lines

        for line in events_lines(self.stack.agent.last_turn(self.user, self.session).get("events") or [], self.user):
            self.console.print(f"   [dim]memory {escape(line)}[/]")

    # ------------------------------------------------------------------------------ slash commands

    def _help(self, arg: str) -> None:
        self.console.print(escape(HELP))

    def _show_memory(self, arg: str) -> None:
        from agent.views import facts_table, recollection_table

        self.console.print(facts_table(self.stack.memory, self.user))
        last = self.stack.agent.last_turn(self.user, self.session)
        self.console.print(recollection_table(last.get("recollection")))

    def _forget(self, arg: str) -> None:
        question = f"erase everything pllm knows about [bold]{escape(self.user)}[/]? {escape('[y/N]')} "
        try:
            answer = self.reader.ask(question)
        except (EOFError, KeyboardInterrupt):
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            self.console.print("nothing erased")
            return
        removed = self.stack.agent.forget(self.user)
        forget_history(self.stack.settings.home, self.user)  # also when this session reads a pipe
        self.reader.clear_history()
        self.console.print(f"[yellow]forgot everything about {escape(self.user)}[/] ({sum(removed.values())} records)")

    def _rate(self, value: int) -> None:
        rated = self.stack.agent.rate(self.user, value, session_id=self.session)
        self.console.print(f"[dim]noted: you {'liked' if value > 0 else 'disliked'} that reply[/]")
        for ev in rated.events:  # a style weight turned to the other pole
            self.console.print(f"[dim]your {escape(ev.dimension)} preference moved: {ev.before:+.2f} → {ev.after:+.2f}[/]")

    def _export(self, arg: str) -> None:
        export_to(self.console, self.stack.user_data, self.user, Path(arg) if arg else None, err_console=self.err_console)


def export_to(console: Console, user_data: Any, user_id: str, out: Path | None, *,
              err_console: Console | None = None) -> bool:
    """``user_data.export(user_id)`` (the user-data registry: every part that holds the user's data) as JSON
    to ``out``, or pretty-printed when ``out`` is None; False if ``out`` could not be written (the error is
    printed)."""
    doc = user_data.export(user_id)
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    if out is None:
        console.print_json(text)
        return True
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        print_error(f"cannot write {out}: {exc.strerror or exc}; pass a file in a folder that exists", err_console)
        return False
    console.print(f"exported {', '.join(escape(str(p)) for p in doc['parts'])} of {escape(user_id)} to "
                  f"{escape(str(out))}")
    return True
