"""Knowledge editing on CounterFact with SmolLM2: several methods on the same cases, beside the unedited model.

Each case is edited alone on the base model (the deltas are hooked in only while that case is scored;
the base weights never change). Every method runs on the same cases in the same run; ``pre`` is the
unedited model on them. A method that is not registered in ``editing.METHODS`` (e.g. ``ft_l`` before it
is merged) is skipped with a logged note and ``null`` figures. Cases whose subject does not occur in the
prompt are skipped (counted). Figures are percentages; ``s_per_edit`` is the mean wall time of one call
(the context prefixes, the same for every edit, are generated once beforehand, as a caller making many edits does).

    python bench/edit_counterfact.py [DATA] [--n 200] [--methods rome memit ft_l] [--threads 1] [--json]
"""

from __future__ import annotations

import logging
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser, print_table  # noqa: E402
from bench._data import DEFAULT_DATA  # noqa: E402
from bench._editing import aggregate, default_hparams, edit_each, load_counterfact, percent, score_all  # noqa: E402

COUNTERFACT = Path("knowledge_editing") / "counterfact-edit-1k.json"
SCORED = ("efficacy", "generalization", "locality")

log = logging.getLogger("bench.edit_counterfact")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("data", type=Path, nargs="?", default=DEFAULT_DATA, help="the shared evaluation data folder")
    p.add_argument("--n", "--limit", dest="n", type=int, default=10, help="number of CounterFact cases")
    p.add_argument("--methods", nargs="+", default=["rome", "memit", "ft_l"], help="editing methods, by name")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--cache-dir", type=Path, default=Path(".pllm-home") / "models")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from editing import METHODS, LocalModel, RuntimeConfig

    cases, skipped = load_counterfact(args.data / COUNTERFACT, args.n)
    lm = LocalModel.load(RuntimeConfig(cache_dir=args.cache_dir, threads=args.threads))
    pre = score_all(lm, cases)
    summary: dict[str, Any] = {}
    cpu_per_edit: dict[str, float] = {}  # shown in the table only: the JSON line has exactly the figures asked for
    for method in args.methods:
        if method not in METHODS:
            log.warning("method %r is not in editing.METHODS (known: %s): skipped, its figures are null",
                        method, sorted(METHODS))
            summary[method] = {**dict.fromkeys(SCORED), "s_per_edit": None}
            continue
        post, seconds, cpu = edit_each(lm, cases, method, default_hparams(lm, method))
        after, _ = aggregate(pre, post)
        summary[method] = {**percent(after), "s_per_edit": round(statistics.mean(seconds), 2)}
        cpu_per_edit[method] = statistics.mean(cpu)
    _, before = aggregate(pre, pre)
    summary["pre"] = percent(before)
    rows = [(name, *("-" if f[k] is None else f"{f[k]:.1f}" for k in SCORED),
             "" if f.get("s_per_edit") is None else f"{f['s_per_edit']:.2f}",
             f"{cpu_per_edit[name]:.2f}" if name in cpu_per_edit else "") for name, f in summary.items()]
    print_table(f"CounterFact on {lm.model_id}, {len(cases)} cases ({skipped} skipped), each edit alone (%)",
                ["method", *SCORED, "s/edit (wall)", "CPU s/edit"], rows)
    emit_json(summary)


if __name__ == "__main__":
    main()
