"""Knowledge editing on CounterFact with SmolLM2: several methods on the same cases, beside the unedited model.

Each case is edited alone on the base model (the deltas are hooked in only while that case is scored;
the base weights never change). Every method runs on the same cases in the same run; ``pre`` is the
unedited model on them. A method that is not registered in ``editing.METHODS`` (e.g. ``ft_l`` before it
is merged) is skipped with a logged note and ``null`` figures. Cases whose subject does not occur in the
prompt are skipped (counted). Figures are percentages; ``s_per_edit`` is the mean wall time of one call
(the context prefixes, the same for every edit, are generated once beforehand, as a caller making many edits does).

    python bench/edit_counterfact.py [DATA] [--n 200] [--methods rome memit ft_l] [--stats-dir DIR] [--threads 1]
                                     [--json]

DATA is the shared data folder or the CounterFact file itself (``knowledge_editing/counterfact-edit-1k.json``).

``--stats-dir DIR`` gives ROME and MEMIT the key statistics C = E[kkᵀ] of their layers (20k tokens the model
writes itself), measured before the first edit and cached in DIR; without it C = I. With ``--parallel`` each
process measures what DIR lacks, so fill it first with a run of one case.

``--model`` takes a GGUF file or a transformers folder (default: the packaged SmolLM2); ``--device`` and
``--dtype`` place it (default: the accelerator if present, in bf16; else the CPU in fp32). On an accelerator
the seconds are taken after the device has finished the edit's work.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser, print_table  # noqa: E402
from bench._data import DEFAULT_DATA  # noqa: E402
from bench._editing import (  # noqa: E402
    aggregate, default_hparams, edit_each, load_counterfact, percent, prefetch_statistics, score_all)

COUNTERFACT = Path("knowledge_editing") / "counterfact-edit-1k.json"
SCORED = ("efficacy", "generalization", "locality")

log = logging.getLogger("bench.edit_counterfact")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Score the unedited model, then every method, in this process: the figures and what they ran on."""
    from editing import METHODS, LocalModel, RuntimeConfig, SecondMoments

    cases, skipped = load_counterfact(args.data if args.data.is_file() else args.data / COUNTERFACT, args.n)
    lm = LocalModel.load(RuntimeConfig(model=args.model, cache_dir=args.cache_dir, device=args.device,
                                       dtype=args.dtype, threads=args.threads))
    hparams = {m: default_hparams(lm, m) for m in args.methods if m in METHODS}
    stats = None
    if args.stats_dir is not None:
        stats = SecondMoments(lm.model, lm.tokenizer, model_id=lm.model_id, cache_dir=args.stats_dir)
        prefetch_statistics(stats, hparams.values())  # before any edit is timed: measured once, then cached
    pre = score_all(lm, cases)
    summary: dict[str, Any] = {}
    cpu_per_edit: dict[str, float] = {}  # shown in the table only: the JSON line has exactly the figures asked for
    for method in args.methods:
        if method not in METHODS:
            log.warning("method %r is not in editing.METHODS (known: %s): skipped, its figures are null",
                        method, sorted(METHODS))
            summary[method] = {**dict.fromkeys(SCORED), "s_per_edit": None}
            continue
        post, seconds, cpu = edit_each(lm, cases, method, hparams[method], stats=stats)
        after, _ = aggregate(pre, post)
        summary[method] = {**percent(after), "s_per_edit": round(statistics.mean(seconds), 2)}
        cpu_per_edit[method] = statistics.mean(cpu)
    _, before = aggregate(pre, pre)
    summary["pre"] = percent(before)
    where = f"{lm.model.device.type}, {str(lm.model.dtype).removeprefix('torch.')}"
    where += ", key statistics C = E(kkᵀ)" if stats is not None else ", no key statistics (C = I)"
    return {"summary": summary, "cpu_per_edit": cpu_per_edit, "model": f"{lm.model_id} ({where})",
            "cases": len(cases), "skipped": skipped}


def measure_in_parallel(args: argparse.Namespace) -> dict[str, Any]:
    """One process per method, all started at once on the same cases (on an accelerator they share it).

    Each process scores the unedited model too; those figures must agree, or the run is refused.
    """
    with tempfile.TemporaryDirectory(prefix="pllm-counterfact-") as tmp:
        procs = []
        for method in args.methods:
            report = Path(tmp) / f"{method}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), str(args.data), "--n", str(args.n),
                   "--methods", method, "--cache-dir", str(args.cache_dir), "--report", str(report)]
            for flag in ("model", "device", "dtype", "threads", "stats_dir"):
                if getattr(args, flag) is not None:
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            procs.append((method, report, subprocess.Popen(cmd)))
        reports = []
        for method, report, proc in procs:
            if proc.wait() != 0 or not report.is_file():
                raise SystemExit(f"the {method} process failed (exit {proc.returncode}); its output is above")
            reports.append(json.loads(report.read_text()))
    pres = {json.dumps(r["summary"]["pre"], sort_keys=True) for r in reports}
    if len(pres) != 1:
        raise SystemExit(f"the processes scored the unedited model differently: {sorted(pres)}")
    merged = dict(reports[0])
    merged["summary"] = {m: r["summary"][m] for m, r in zip(args.methods, reports)} | {"pre": reports[0]["summary"]["pre"]}
    merged["cpu_per_edit"] = {m: r["cpu_per_edit"][m] for m, r in zip(args.methods, reports) if m in r["cpu_per_edit"]}
    return merged


def main() -> None:
    p = parser(__doc__)
    p.add_argument("data", type=Path, nargs="?", default=DEFAULT_DATA, help="the shared data folder, or the CounterFact file")
    p.add_argument("--n", "--limit", dest="n", type=int, default=10, help="number of CounterFact cases")
    p.add_argument("--methods", nargs="+", default=["rome", "memit", "ft_l"], help="editing methods, by name")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--cache-dir", type=Path, default=Path(".pllm-home") / "models")
    p.add_argument("--model", default=None, help="GGUF file or transformers folder (default: the packaged SmolLM2)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the accelerator if present)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, ... (default: bf16 on an accelerator, else fp32)")
    p.add_argument("--stats-dir", type=Path, default=None,
                   help="key statistics C = E[kkᵀ] cached here, measured first if missing (default: none, C = I)")
    p.add_argument("--parallel", action="store_true",
                   help="run each method in its own process, all at once (for an accelerator; its seconds are shared)")
    p.add_argument("--report", type=Path, default=None, help=argparse.SUPPRESS)  # a --parallel child's figures
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bench").setLevel(logging.INFO)  # progress every 20 edits (a run cut short still tells)
    result = measure_in_parallel(args) if args.parallel and len(args.methods) > 1 else measure(args)
    if args.report is not None:
        args.report.write_text(json.dumps(result))
        return
    summary, cpu_per_edit = result["summary"], result["cpu_per_edit"]
    rows = [(name, *("-" if f[k] is None else f"{f[k]:.1f}" for k in SCORED),
             "" if f.get("s_per_edit") is None else f"{f['s_per_edit']:.2f}",
             f"{cpu_per_edit[name]:.2f}" if name in cpu_per_edit else "") for name, f in summary.items()]
    print_table(f"CounterFact on {result['model']}, {result['cases']} cases ({result['skipped']} skipped), each edit "
                f"alone (%){', methods in parallel processes' if args.parallel else ''}",
                ["method", *SCORED, "s/edit (wall)", "CPU s/edit"], rows)
    emit_json(summary)


if __name__ == "__main__":
    main()
