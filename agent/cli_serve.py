"""``pllm serve`` (the HTTP server: OpenAI-compatible chat, memory REST, web chat) and ``pllm keys`` (its API keys)."""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from agent.cli_common import (
    PLLM_ERRORS,
    PllmTyper,
    DeviceOpt,
    DtypeOpt,
    HomeOpt,
    MaxNewTokensOpt,
    ModelOpt,
    TemperatureOpt,
    VerboseOpt,
    console,
    fail,
    settings,
    setup,
)

__all__ = ["keys_app", "serve", "is_loopback"]

keys_app = PllmTyper(help="API keys of `pllm serve`: each reaches a set of users (or all, --admin).",
                     no_args_is_help=True)


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only this machine (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: Annotated[str, typer.Option(metavar="HOST", help="address to bind; anything but loopback needs API keys")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", min=1, max=65535)] = 8000,
    require_keys: Annotated[Optional[bool], typer.Option(
        "--require-keys/--no-keys", show_default="on unless HOST is loopback",
        help="every request needs an API key (`pllm keys create`)")] = None,
    batch_window_ms: Annotated[float, typer.Option(
        metavar="MS", min=0.0, help="gather concurrent replies this long and decode them as one batch (0: one at a time)")] = 25.0,
    max_batch: Annotated[int, typer.Option(metavar="N", min=2, help="most replies decoded together")] = 8,
    engine_process: Annotated[bool, typer.Option(
        "--engine-process/--in-process", help="decode in a process of its own, away from the web server's "
        "interpreter lock (see the README's 'scaling out')")] = False,
    engine_cpus: Annotated[Optional[str], typer.Option(
        metavar="CPUS", help="with --engine-process: pin it to these CPUs ('0-1'); with two or more it decodes on "
        "the first and prefills joining requests on the others, in a prefill process")] = None,
    max_new_tokens: MaxNewTokensOpt = None, temperature: TemperatureOpt = None,
    home: HomeOpt = None, model: ModelOpt = None, device: DeviceOpt = None, dtype: DtypeOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Serve pllm over HTTP: OpenAI-compatible chat at /v1/chat/completions, the memory REST API (OpenAPI at /docs)
    and a web chat with a live memory panel at /.

    Point any OpenAI client at http://HOST:PORT/v1 and name the pllm user in the request's `user` field.
    """
    setup(verbose)
    import uvicorn

    from agent.cli import _load_stack
    from agent.serve import KeyStore, create_app

    keys_on = (not is_loopback(host)) if require_keys is None else require_keys
    if not keys_on and not is_loopback(host):
        console.print(f"[yellow]warning:[/] serving on {escape(host)} without API keys: anyone who can reach it "
                      "reads and writes every user's memory")
    s = settings(home, model=model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                 temperature=temperature)
    keys = KeyStore.under(s.home)
    if keys_on and not keys.active():
        keys.close()
        fail(f"API keys are required on {host} but {s.home} has none: make one with `pllm keys create --admin "
             f"--home {s.home}` (or --user NAME), or serve on 127.0.0.1")
    if engine_cpus and not engine_process:
        fail("--engine-cpus goes with --engine-process")
    if engine_process and batch_window_ms <= 0:
        fail("--engine-process batches replies: give --batch-window-ms above 0")
    stack = _load_stack(s)
    try:
        if stack.local is not None and engine_process:
            try:
                engine = stack.local.enable_engine_process(batch_window_ms, max_batch, cpus=engine_cpus)
            except PLLM_ERRORS as exc:
                fail(exc)
            cpus = [str(c) for c in engine.cpus or ()]
            where = (f" on CPU {cpus[0]}, prefills on {', '.join(cpus[1:])}" if engine.split
                     else f" on CPUs {', '.join(cpus)}" if cpus else "")
            console.print(f"engine process {engine.pid} decodes{where}")
        elif stack.local is not None:
            stack.local.enable_batching(batch_window_ms, max_batch)
        app = create_app(stack, keys=keys, require_keys=keys_on)
        served = escape(stack.local.model_id if stack.local else "chat model")
        placement = f" ({escape(stack.local.plan.describe())})" if stack.local else ""
        console.print(f"pllm serving [bold]{served}[/]{placement} on "
                      f"http://{escape(host)}:{port}  (web chat /, API docs /docs, OpenAI base_url "
                      f"http://{escape(host)}:{port}/v1; keys {'required' if keys_on else 'off'})")
        uvicorn.run(app, host=host, port=port, log_level="warning" if verbose == 0 else "info")
    finally:
        stack.close()
        keys.close()


@keys_app.command("create")
def keys_create(
    user: Annotated[Optional[list[str]], typer.Option("--user", "-u", metavar="NAME",
                                                      help="a user this key may act for (repeatable)")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="every user, and the routes that span users")] = False,
    name: Annotated[str, typer.Option(metavar="TEXT", help="a note to recognise the key by")] = "",
    home: HomeOpt = None, verbose: VerboseOpt = 0,
) -> None:
    """Make a key; it is shown once (only its hash is stored)."""
    setup(verbose)
    from agent.serve import KeyStore

    if admin == bool(user):
        fail("give --admin, or one or more --user NAME (not both)")
    s = settings(home)
    keys = KeyStore.under(s.home)
    try:
        made = keys.create(["*"] if admin else (user or []), name=name)
    except (ValueError, *PLLM_ERRORS) as exc:
        fail(exc)
    finally:
        keys.close()
    console.print(f"key {made.key.key_id} for {'every user' if admin else ', '.join(made.key.users)} "
                  "(shown once; keep it):")
    console.print(made.secret, markup=False, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
              home: HomeOpt = None, verbose: VerboseOpt = 0) -> None:
    """The keys of the home (ids and scopes; the secrets are not stored)."""
    setup(verbose)
    from agent.serve import KeyStore

    keys = KeyStore.under(settings(home).home)
    try:
        rows = keys.list()
    finally:
        keys.close()
    if as_json:
        console.print_json(json.dumps([{"id": k.key_id, "name": k.name, "users": list(k.users),
                                        "created_at": k.created_at, "revoked": k.revoked} for k in rows]))
        return
    table = Table(title="API keys")
    for col in ("id", "name", "users", "created", "revoked"):
        table.add_column(col)
    for k in rows:
        table.add_row(k.key_id, escape(k.name), "every user" if k.admin else escape(", ".join(k.users)), k.created_at,
                      "yes" if k.revoked else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="from `pllm keys list`")],
                home: HomeOpt = None, verbose: VerboseOpt = 0) -> None:
    """Revoke a key: requests with it are refused from now on."""
    setup(verbose)
    from agent.serve import KeyStore

    keys = KeyStore.under(settings(home).home)
    try:
        if not keys.revoke(key_id):
            fail(f"no live key {key_id!r}: see `pllm keys list`")
    finally:
        keys.close()
    console.print(f"key {key_id} revoked")
