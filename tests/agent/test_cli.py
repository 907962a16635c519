"""The ``pllm`` commands as a user runs them (typer's CliRunner: stdin is a pipe, not a terminal)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from agent.cli import app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cli_env(tmp_path: Path, model_cache_dir: Path, local_model) -> dict[str, str]:
    # local_model: makes sure the converted cache exists before the CLI loads from it
    return {"PLLM_HOME": str(tmp_path / "home"), "PLLM_MODEL_CACHE": str(model_cache_dir)}


def _no_markup(text: str) -> None:
    assert "[red]" not in text and "[/]" not in text and "[/red]" not in text, text


# ------------------------------------------------------------------------------------------ no model


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"pllm {metadata.version('pllm')}"


def _all_command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, cmd in getattr(group, "commands", {}).items():
        paths += _all_command_paths(cmd, (*prefix, name))
    return paths


def test_every_help_reads_without_type_labels() -> None:
    paths = _all_command_paths(get_command(app))
    assert ("chat",) in paths and ("memory", "import") in paths and ("scenario", "run") in paths
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0, (path, result.output)
        noise = re.findall(r"<(?:bool|str|path|int|float|list\[\w+\])>", result.output)
        assert not noise, f"`pllm {' '.join(path)} --help` shows {noise}:\n{result.output}"
    chat_help = CliRunner().invoke(app, ["chat", "--help"], env={"COLUMNS": "100"}).output
    assert "--temperature" in chat_help and "Model and generation" in chat_help  # grouped in their own panel


def test_scenario_format_errors_are_rendered_not_printed_as_markup(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nuser: sam\nsessions:\n  - at: 2026-01-05\n    turn: []\n")
    result = CliRunner().invoke(app, ["scenario", "run", str(bad)])
    assert result.exit_code == 2
    assert "error:" in result.output and "unknown key 'turn'" in result.output
    _no_markup(result.output)


def test_the_scenario_cli_runs_without_the_main_cli() -> None:
    code = textwrap.dedent("""
        import sys
        from typer.testing import CliRunner
        from agent.scenarios.cli import scenario_app
        result = CliRunner().invoke(scenario_app, ["run", "no-such-file.yaml"])
        print(result.exit_code, "agent.cli" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # The command ran its set-up and failed cleanly, and never needed agent.cli: the dependency goes one way.
    assert out.stdout.split() == ["2", "False"]


# ------------------------------------------------------------------------------------------ model


def test_info_reports_versions_device_and_cache(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["info"], env=cli_env)
    assert result.exit_code == 0, result.output
    for expected in ("torch", "transformers", "chromadb", "langgraph", "device", "ready"):
        assert expected in result.output


def test_info_dtype_flag_shows_the_placement_and_bad_placements_fail_clearly(tmp_path: Path) -> None:
    env = {"PLLM_HOME": str(tmp_path / "home")}
    result = CliRunner().invoke(app, ["info", "--dtype", "bfloat16", "--device", "cpu"], env=env)
    assert result.exit_code == 0, result.output
    device_line = next(line for line in result.output.splitlines() if "device" in line and "cpu" in line)
    assert "bfloat16" in device_line and ("packed linears" in device_line or "not packed" in device_line)
    for args, extra_env, said in [(["info", "--dtype", "bf17"], {}, "unknown dtype 'bf17'"),
                                  (["info"], {"PLLM_DTYPE": "int3"}, "unknown dtype 'int3'"),
                                  (["info", "--device", "gpu0"], {}, "unknown device 'gpu0'")]:
        bad = CliRunner().invoke(app, args, env={**env, **extra_env})
        assert bad.exit_code == 2, (args, bad.output)
        assert said in bad.output and "Traceback" not in bad.output, bad.output
        _no_markup(bad.output)


def test_generate_streams_an_answer(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["generate", "What is the capital of France?", "--max-new-tokens", "20"], env=cli_env)
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output


def test_generate_with_a_missing_model_fails_clearly(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["generate", "hi", "--model", str(tmp_path / "[nope]")], env=cli_env)
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert "[nope]" in result.output  # data in an error is shown as it is, not read as markup
    _no_markup(result.output)


def test_chat_as_a_user_types_it(cli_env: dict[str, str], tmp_path: Path) -> None:
    export = tmp_path / "sam.json"
    typed = ["I live in Porto and I love jazz.", "/memory", f"/export {export}",
             "/forget", "n", "/memory",  # declined: nothing erased
             "/forget", "y", "/memory", "/quit"]
    result = CliRunner().invoke(app, ["chat", "--user", "sam", "--max-new-tokens", "8"], input="\n".join(typed) + "\n",
                                env=cli_env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "memory + lives in: Porto" in out and "memory + likes: jazz" in out  # change events shown after the reply
    kept, _, after_forget = out.partition("forgot everything about sam")
    assert "nothing erased" in kept and kept.split("nothing erased")[1].count("lives in: Porto") == 1
    assert "lives in: Porto" not in after_forget  # /forget + y erased it
    doc = json.loads(export.read_text())
    assert doc["user_id"] == "sam" and any("Porto" in e["text"] for e in doc["parts"]["memory"]["episodes"])
    assert doc["parts"]["threads"]["sessions"]  # the conversation is part of the user's data too


def test_chat_takes_a_temperature_and_checks_it(cli_env: dict[str, str]) -> None:
    sampled = CliRunner().invoke(app, ["chat", "-u", "kim", "--temperature", "0.8", "--max-new-tokens", "4"],
                                 input="Hello!\n", env=cli_env)
    assert sampled.exit_code == 0 and "pllm ›" in sampled.output, sampled.output
    bad = CliRunner().invoke(app, ["chat", "-u", "kim", "--temperature", "-1"], env=cli_env)
    assert bad.exit_code == 2 and "--temperature" in bad.output


def test_memory_commands_show_export_and_forget(cli_env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    chat = runner.invoke(app, ["chat", "--user", "ann", "--max-new-tokens", "4"],
                         input="My name is Ann and I live in Turin.\n/good\nKeep it short, please.\n/quit\n", env=cli_env)
    assert "you liked that reply" in chat.output, chat.output
    shown = runner.invoke(app, ["memory", "show", "--user", "ann"], env=cli_env)
    assert shown.exit_code == 0 and "lives in: Turin" in shown.output
    assert "verbosity -1.00 (concise)" in shown.output and "1 rated reply" in shown.output, shown.output
    out = tmp_path / "ann.json"
    assert runner.invoke(app, ["memory", "export", "--user", "ann", "--out", str(out)], env=cli_env).exit_code == 0
    assert "Turin" in out.read_text()
    forgot = runner.invoke(app, ["memory", "forget", "--user", "ann", "--yes"], env=cli_env)
    assert forgot.exit_code == 0 and "threads 1" in forgot.output  # the conversation thread went too
    assert "lives in: Turin" not in runner.invoke(app, ["memory", "show", "--user", "ann"], env=cli_env).output
    missing = runner.invoke(app, ["memory", "export", "--user", "nobody"], env=cli_env)
    assert missing.exit_code == 2 and "nothing is stored" in missing.output
    _no_markup(missing.output)


_NOISE = re.compile(r"DEBUG|INFO|Batches|Loading weights|it/s\]|\d+%\|")


def test_default_output_has_no_progress_bars_or_library_logs(cli_env: dict[str, str]) -> None:
    runner = CliRunner()
    runs = [runner.invoke(app, ["chat", "-u", "bo", "--max-new-tokens", "4"], input=text, env=cli_env)
            for text in ("I live in Oslo and I love jazz.\n", "Where do I live?\n")]  # the second rebuilds BM25
    runs.append(runner.invoke(app, ["memory", "show", "-u", "bo"], env=cli_env))
    for r in runs:
        assert r.exit_code == 0, r.output
        assert not _NOISE.search(r.output), r.output  # stdout and stderr together
    verbose = runner.invoke(app, ["memory", "show", "-u", "bo", "-vv"], env=cli_env)
    assert "DEBUG" in verbose.output or "INFO" in verbose.output  # -v/-vv bring the logs back


# ------------------------------------------------------------------------------------------ import


def test_memory_import_round_trips_and_refuses_bad_files(cli_env: dict[str, str], tmp_path: Path, embedder) -> None:
    from memory import Memory, MemoryConfig

    home = Path(cli_env["PLLM_HOME"])
    with Memory(MemoryConfig(home=home), embedder=embedder) as mem:
        mem.remember("sam", "I live in Oslo and I have a cat named Tom.")
    runner = CliRunner()
    doc = tmp_path / "sam.json"
    assert runner.invoke(app, ["memory", "export", "-u", "sam", "--out", str(doc)], env=cli_env).exit_code == 0
    before = runner.invoke(app, ["memory", "show", "-u", "sam"], env=cli_env).output

    not_json = tmp_path / "bad.json"
    not_json.write_text('{"format": "pllm.memory.export", ')
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "something else"}))
    for bad, words in ((not_json, "is not valid JSON"), (wrong, "not a pllm user export"),
                       (tmp_path / "missing.json", "cannot read")):
        result = runner.invoke(app, ["memory", "import", str(bad)], env=cli_env)
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.output
    assert runner.invoke(app, ["memory", "show", "-u", "sam"], env=cli_env).output == before  # nothing changed

    assert runner.invoke(app, ["memory", "forget", "-u", "sam", "--yes"], env=cli_env).exit_code == 0
    imported = runner.invoke(app, ["memory", "import", str(doc)], env=cli_env)
    assert imported.exit_code == 0 and "imported sam from" in imported.output, imported.output
    assert runner.invoke(app, ["memory", "show", "-u", "sam"], env=cli_env).output == before


def test_memory_import_as_another_user(cli_env: dict[str, str], tmp_path: Path, embedder) -> None:
    from memory import Memory, MemoryConfig

    home = Path(cli_env["PLLM_HOME"])
    with Memory(MemoryConfig(home=home), embedder=embedder) as mem:
        mem.remember("sam", "I live in Oslo.")
    doc = tmp_path / "sam.json"
    runner = CliRunner()
    assert runner.invoke(app, ["memory", "export", "-u", "sam", "--out", str(doc)], env=cli_env).exit_code == 0
    result = runner.invoke(app, ["memory", "import", str(doc), "--as", "sam2"], env=cli_env)
    assert result.exit_code == 0, result.output
    assert "lives in: Oslo" in runner.invoke(app, ["memory", "show", "-u", "sam2"], env=cli_env).output
    assert "lives in: Oslo" in runner.invoke(app, ["memory", "show", "-u", "sam"], env=cli_env).output


# ------------------------------------------------------------------------------------------ home layout


def test_the_cli_reads_the_home_the_python_api_writes(tmp_path: Path, embedder) -> None:
    from memory import Memory, MemoryConfig

    home = tmp_path / "h"
    with Memory(MemoryConfig(home=home), embedder=embedder) as mem:
        mem.remember("sam", "I live in Oslo.")
    result = CliRunner().invoke(app, ["memory", "show", "-u", "sam", "--home", str(home)])
    assert result.exit_code == 0 and "lives in: Oslo" in result.output, result.output
    assert not (home / "memory").exists()  # one layout: the memory files sit in the home itself


def test_an_old_home_layout_is_moved_up_once_and_a_clash_moves_nothing(tmp_path: Path, embedder) -> None:
    from memory import Memory, MemoryConfig

    home = tmp_path / "h"
    with Memory(MemoryConfig(home=home / "memory"), embedder=embedder) as mem:  # how the CLI used to lay it out
        mem.remember("sam", "I live in Oslo.")
    result = CliRunner().invoke(app, ["memory", "show", "-u", "sam", "--home", str(home)])
    assert result.exit_code == 0 and "lives in: Oslo" in result.output, result.output
    assert "moved memory from the old layout" in result.output
    assert (home / "memory.sqlite").exists() and (home / "chroma").is_dir() and not (home / "memory").exists()
    with Memory(MemoryConfig(home=home), embedder=embedder) as mem:  # Chroma works from its new place
        assert any("dense" in e.sources for e in mem.recall("sam", "Where do I live?").episodes)

    (home / "memory").mkdir()  # the same files in both places: nothing moves, the user is told what to do
    (home / "memory" / "memory.sqlite").write_bytes(b"old")
    clash = CliRunner().invoke(app, ["memory", "show", "-u", "sam", "--home", str(home)])
    assert clash.exit_code == 2 and "two layouts" in clash.output and "mv " in clash.output, clash.output
    assert (home / "memory" / "memory.sqlite").read_bytes() == b"old"


@pytest.mark.slow
def test_demo_runs_three_sessions_and_replaces_the_preference(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["demo", "--max-new-tokens", "6"], env=cli_env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("session ") >= 3
    assert "memory - likes: espresso (no longer true)" in out and "memory + likes: green tea" in out
    session3 = out.split("session 3")[1]
    assert "I like green tea." in session3 and "I like espresso." not in session3


def test_jobs_and_edit_lists_read_the_home_without_the_model(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    import torch

    from agent.jobs import JobStore
    from editing.requests import LowRankDelta
    from editing.user_edits import EditRecord, EditRegistry

    home, now = tmp_path / "home", datetime(2026, 1, 5, 9, tzinfo=timezone.utc)
    jobs = JobStore.under(home)
    done = jobs.add("knowledge_edit", "ann", ["+ lives in: Oslo"], now)
    jobs.finish(done, "done", now, detail="1 edit(s) added, published adapter v1")
    failed = jobs.add("knowledge_edit", "bob", ["+ works as: nurse"], now)
    jobs.finish(failed, "failed", now, error="JobRejected: 1 rejected by their check")
    jobs.close()
    registry = EditRegistry(home)
    delta = LowRankDelta("model.layers.4.mlp.down_proj", torch.zeros(1, 8), torch.zeros(4, 1))
    registry.save_tensors("ann", "edit_1", [delta], {})
    registry.record([EditRecord("edit_1", "ann", "ann|lives_in|", "fact_1", "lives_in", "Oslo", "Where do I live?",
                                "ft_l", "active", {"chat_efficacy": 1.0, "locality": 1.0, "seconds": 42.0})], now=now)
    registry.close()
    env = {"PLLM_HOME": str(home)}

    listed = CliRunner().invoke(app, ["jobs", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["user"], r["state"]) for r in rows] == [("bob", "failed"), ("ann", "done")]  # newest first
    assert "rejected by their check" in rows[0]["error"]
    only_ann = CliRunner().invoke(app, ["jobs", "list", "--user", "ann"], env=env)
    assert only_ann.exit_code == 0 and "adapter v1" in only_ann.output and "bob" not in only_ann.output

    edits = CliRunner().invoke(app, ["edit", "list", "--user", "ann", "--json"], env=env)
    assert edits.exit_code == 0, edits.output
    doc = json.loads(edits.output)
    assert doc["published_version"] is None  # recorded, but nothing was published in this home
    assert [(e["target"], e["state"], e["metrics"]["chat_efficacy"]) for e in doc["edits"]] == [("Oslo", "active", 1.0)]
    table = CliRunner().invoke(app, ["edit", "list", "--user", "ann"], env=env)
    assert table.exit_code == 0 and "Oslo" in table.output and "active" in table.output


@pytest.mark.slow  # trains the two verbosity poles of SmolLM2 on 2 prompts, 1 DPO step each (~1 min)
def test_align_train_trains_the_poles_once_and_status_lists_them(tmp_path: Path, model_cache_dir: Path,
                                                                 local_model) -> None:
    cache = tmp_path / "cache"  # poles of its own: the converted model linked in, nothing else
    cache.mkdir()
    for entry in model_cache_dir.iterdir():
        if entry.is_dir() and entry.name != "poles" and entry.name != "stats":
            (cache / entry.name).symlink_to(entry)
    env = {"PLLM_HOME": str(tmp_path / "home"), "PLLM_MODEL_CACHE": str(cache)}
    from agent import Settings
    from agent.jobs import JobStore
    from memory.service import Memory

    with Memory(Settings(home=tmp_path / "home").memory_config()) as mem:  # weights set before any pole exists
        mem.remember("ana", "Please keep your answers short.", role="user")
        mem.remember("ben", "Hello there!", role="user")
        assert mem.preference_weights("ana")["verbosity"].weight < 0
        assert all(w.weight == 0 for w in mem.preference_weights("ben").values())
    runner = CliRunner()
    before = runner.invoke(app, ["align", "status", "--json"], env=env)
    assert before.exit_code == 0, before.output
    assert not any(p["trained"] for p in json.loads(before.output)["poles"].values())

    bad = runner.invoke(app, ["align", "train", "-d", "tone"], env=env)
    assert bad.exit_code != 0 and "unknown dimension" in bad.output and "verbosity" in bad.output

    trained = runner.invoke(app, ["align", "train", "-d", "verbosity", "--steps", "1", "--prompts", "4",
                                  "--max-new-tokens", "96"], env=env)
    assert trained.exit_code == 0, trained.output
    assert "DPO verbosity.concise" in trained.output and "done" in trained.output
    status = json.loads(runner.invoke(app, ["align", "status", "--json"], env=env).output)
    assert {k for k, p in status["poles"].items() if p["trained"]} == {"verbosity.concise", "verbosity.detailed"}
    assert status["poles"]["verbosity.concise"]["pllm_version"] == metadata.version("pllm")
    # ana's weights predate the poles: training queued her merge (ben has no weights), and the worker publishes it.
    assert "queued a preference merge for 1 user(s)" in " ".join(trained.output.split())
    jobs = JobStore.under(tmp_path / "home")
    assert [(r.kind, r.state) for r in jobs.list("ana")] == [("preference_weights", "queued")]
    assert jobs.list("ben") == []
    jobs.close()
    ran = runner.invoke(app, ["worker", "--once"], env=env)
    assert ran.exit_code == 0, ran.output
    flat = " ".join(ran.output.split())
    assert "done" in flat and "verbosity.concise × 1.00" in flat and "published adapter v1" in flat, flat

    again = runner.invoke(app, ["align", "train", "-d", "verbosity"], env=env)  # kept: nothing to do
    assert again.exit_code == 0
    assert "already trained: verbosity.concise, verbosity.detailed" in " ".join(again.output.split())
    rerun = runner.invoke(app, ["worker", "--once"], env=env)  # same weights, same poles: nothing new to publish
    assert rerun.exit_code == 0 and "nothing to publish" in " ".join(rerun.output.split()), rerun.output
