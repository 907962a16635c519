"""Plumbing shared by every ``pllm`` command: consoles, process set-up, options, settings, errors, help.

:mod:`agent.cli` and :mod:`agent.scenarios.cli` both import this module and never each other's
internals (``agent.cli`` only wires the scenario commands in), so the dependency goes one way.

Printing rule: markup in our own text is rendered; text that comes from the user or from data (facts,
paths, error messages) is either escaped with :func:`rich.markup.escape` or printed as a
:class:`rich.text.Text` / with ``markup=False`` — never both, or the escapes would show.
"""

from __future__ import annotations

import logging
import os
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup

from agent.errors import PLLM_ERRORS  # every pllm error: agent's, memory's, editing's


if TYPE_CHECKING:  # pragma: no cover
    from agent.settings import Settings

__all__ = ["PLLM_ERRORS", "PllmTyper", "console", "err_console", "fail", "print_error", "settings", "setup",
           "pllm_version"]


console = Console()
err_console = Console(stderr=True)

# ------------------------------------------------------------------------------------------ help


class _BlankFlagTypes:
    """Typer 0.29's rich help prints a type label (``<bool>``) beside flags such as ``--verbose`` and
    ``--help``, which take no value. A flag with an empty metavar shows nothing there; options that take a
    value get an explicit metavar where they are declared (``--home DIR``), and arguments with a metavar
    show only that."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            if isinstance(p, TyperArgument) and p.metavar:
                # An argument's name is its metavar (FILE); typer would add "<path>" beside it regardless.
                p.display_type_rich = _no_type  # type: ignore[method-assign]
            elif (getattr(p, "is_flag", False) or getattr(p, "count", False)) and p.metavar is None:
                p.metavar = ""
        return params


def _no_type(ctx: Any) -> None:
    return None


class PllmCommand(_BlankFlagTypes, TyperCommand):
    """A command whose help has no type labels on flags."""


class PllmGroup(_BlankFlagTypes, TyperGroup):
    """A command group whose help has no type labels on flags."""


class PllmTyper(typer.Typer):
    """``typer.Typer`` with pllm's help conventions applied to every group and command."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", PllmGroup)
        kwargs.setdefault("add_completion", False)
        kwargs.setdefault("no_args_is_help", True)
        super().__init__(**kwargs)

    def command(self, name: str | None = None, **kwargs: Any) -> Any:  # noqa: D102 - typer's
        kwargs.setdefault("cls", PllmCommand)
        return super().command(name, **kwargs)


# ------------------------------------------------------------------------------------------ options

MODEL_PANEL = "Model and generation"

# Defaults that depend on the environment are described with show_default (a "[default: ...]" inside
# help text would be read as rich markup and vanish).
HomeOpt = Annotated[Optional[Path], typer.Option(
    "--home", metavar="DIR", show_default="$PLLM_HOME or ~/.cache/pllm", help="pllm home: memory, checkpoints, models")]
UserOpt = Annotated[str, typer.Option("--user", "-u", metavar="NAME", help="whose memory")]
VerboseOpt = Annotated[int, typer.Option(
    "--verbose", "-v", count=True, show_default=False, help="-v: progress and library logs; -vv: debug logs")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", metavar="PATH|ID", rich_help_panel=MODEL_PANEL, show_default="$PLLM_MODEL or the packaged SmolLM2",
    help="model folder, .gguf file or cached hub id")]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", metavar="DEVICE", rich_help_panel=MODEL_PANEL, show_default="$PLLM_DEVICE or auto",
    help="cpu, cuda, cuda:1, mps or auto")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    "--dtype", metavar="DTYPE", rich_help_panel=MODEL_PANEL, show_default="$PLLM_DTYPE or auto",
    help="float32, bfloat16, float16 or auto (CUDA: bf16; CPU: fp32; bfloat16 on a CPU with bf16 kernels decodes "
         "from packed weights, faster, with replies that differ from fp32's)")]
MaxNewTokensOpt = Annotated[Optional[int], typer.Option(
    "--max-new-tokens", metavar="N", min=1, rich_help_panel=MODEL_PANEL, show_default="$PLLM_MAX_NEW_TOKENS or 256",
    help="reply length cap")]
TemperatureOpt = Annotated[Optional[float], typer.Option(
    "--temperature", metavar="T", min=0.0, rich_help_panel=MODEL_PANEL, show_default="$PLLM_TEMPERATURE or 0",
    help="0 = greedy (the same reply every time); higher = more varied")]


# ------------------------------------------------------------------------------------------ set-up

_HANDLER_MARK = "_pllm_cli_handler"


def setup(verbose: int = 0) -> None:
    """Process-wide set-up that belongs to the CLI, not to the libraries: offline hub, logging, quiet bars.

    ``verbose`` 0: warnings and errors only, no progress bars; 1: also INFO logs and library progress
    bars; 2+: DEBUG logs too. Safe to call again (tests run many commands in one process).
    """
    from rich.logging import RichHandler

    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("ANONYMIZED_TELEMETRY", "False")):
        os.environ.setdefault(key, value)
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    # The level sits on the handler too: some libraries set their own logger to DEBUG (bm25s does), and
    # their records reach the root's handlers whatever the root's level.
    handler = RichHandler(console=err_console, show_path=False, level=level)
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    _library_output(show=verbose > 0, level=level)


def _library_output(*, show: bool, level: int) -> None:
    """Progress bars and chatter of the libraries under pllm: off by default, on with ``-v``."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    (enable_progress_bars if show else disable_progress_bars)()
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    # transformers logs through its own handler (it does not propagate): set its level separately.
    hf_logging.set_verbosity(level if show else logging.ERROR)
    # sentence-transformers shows its "Batches" bars when its logger is at INFO/DEBUG: the root level decides.
    # Python warnings from libraries (deprecations, torch notices) are noise to a CLI user; -v routes them
    # into the log instead. Our own packages report through logging, not warnings.
    logging.captureWarnings(show)
    warnings.simplefilter("default" if show else "ignore")


def pllm_version() -> str:
    """pllm's version from the installed package metadata."""
    try:
        return metadata.version("pllm")
    except metadata.PackageNotFoundError:
        return "unknown (pllm is not installed; run `pip install -e .` in the repository)"


# ------------------------------------------------------------------------------------------ settings


def settings(home: Path | None = None, *, migrate: bool = True, **overrides: Any) -> "Settings":
    """Settings from ``PLLM_*`` and the given flags (``None`` = not given); with ``migrate``, moves an old
    home layout up (see :func:`agent.settings.migrate_legacy_layout`).

    A bad environment value or a home that cannot be migrated is a clear error, exit code 2.
    """
    from pydantic import ValidationError

    from agent.settings import HomeLayoutError, Settings, migrate_legacy_layout

    given = {k: v for k, v in {"home": home, **overrides}.items() if v is not None}
    try:
        s = Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        fail(f"invalid settings ({problems}); check the PLLM_* environment variables and the flags")
    if not migrate:
        return s
    try:
        moved = migrate_legacy_layout(s.home)
    except (HomeLayoutError, OSError) as exc:
        fail(exc)
    if moved:
        logging.getLogger("agent.cli").warning(
            "moved memory from the old layout %s into %s: %s", s.home / "memory", s.home, ", ".join(p.name for p in moved))
    return s


# ------------------------------------------------------------------------------------------ errors


def print_error(message: object, to: Console | None = None) -> None:
    """``error: MESSAGE`` on stderr (or ``to``); the message is shown exactly as given (never read as markup)."""
    (to or err_console).print(Text.assemble(("error:", "bold red"), " ", str(message)), soft_wrap=True)


def fail(message: object, code: int = 2) -> NoReturn:
    """Print the error and exit with ``code`` (2: the input or the environment was wrong)."""
    print_error(message)
    cause = message if isinstance(message, BaseException) else None
    raise typer.Exit(code) from cause
