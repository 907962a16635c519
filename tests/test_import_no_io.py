"""Importing pllm's packages opens no socket and writes no file (checked with audit hooks in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# `dill` (installed with TRL's `datasets`) writes and removes a temporary file when it is first imported, and
# torch.utils.data imports it whenever it is installed; it is imported before the hook so that the probe
# checks pllm's own imports, not that third-party side effect.
PROBE = textwrap.dedent(
    """
    import json, sys
    try:
        import dill  # noqa: F401
    except ImportError:
        pass
    events = []
    def hook(event, args):
        if event.startswith("socket.") and event not in ("socket.gethostname", "socket.__new__"):
            events.append([event, repr(args)[:200]])
        elif event == "open":
            path, mode, flags = args
            import os
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                events.append([event, repr(path)])
        elif event in ("os.mkdir", "os.remove", "os.rename", "shutil.rmtree", "subprocess.Popen", "os.system"):
            events.append([event, repr(args)[:200]])
    sys.addaudithook(hook)
    import memory, editing, agent, editing.oppu, editing.oppu.io
    sys.stdout.write(json.dumps(events))
    """
)


def test_importing_the_packages_does_no_io(tmp_path) -> None:
    # PYTHONPATH: the packages of this checkout, not whichever one the venv's editable install points at.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    events = json.loads(out.stdout.strip().splitlines()[-1])
    assert events == [], f"import did I/O: {events[:10]}"
    assert list(tmp_path.iterdir()) == [], "import wrote into HOME"


def test_the_layers_import_only_what_the_readme_says() -> None:
    """memory/ and editing/ never import each other (nor agent/, which composes them)."""
    import ast

    def imported(package: str) -> set[tuple[str, str]]:
        found = set()
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
                found |= {(str(path.relative_to(REPO)), name) for name in names}
        return found

    memory_imports = {(f, m) for f, m in imported("memory") if m.split(".")[0] in ("editing", "agent")}
    assert memory_imports == set()
    editing_imports = {(f, m) for f, m in imported("editing") if m.split(".")[0] in ("memory", "agent")}
    assert editing_imports == set(), sorted(editing_imports)
