"""Which SmolLM2 layer should ROME edit? Efficacy, generalization and locality per layer, on CounterFact.

The same cases are edited at each layer (each case alone, deltas hooked in only while scored). The best
layer maximises the mean of efficacy, generalization and locality after the edit; the unedited model's
figures are the baseline.

    python bench/edit_layers.py [--data ../shared/data] [--limit 10] [--layers 2 4 6 8 12] [--threads 1] [--json]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser, print_table  # noqa: E402
from bench._data import DEFAULT_DATA  # noqa: E402
from bench._editing import aggregate, load_counterfact, run_edits  # noqa: E402
from bench.edit_counterfact import COUNTERFACT  # noqa: E402

SCORED = ("efficacy", "generalization", "locality")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared evaluation data folder")
    p.add_argument("--limit", type=int, default=10, help="number of CounterFact cases per layer")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6, 8, 12])
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--cache-dir", type=Path, default=Path(".pllm-home") / "models")
    args = p.parse_args()
    from editing import LocalModel, ROMEHyperParams, RuntimeConfig

    cases, skipped = load_counterfact(args.data / COUNTERFACT, args.limit)
    lm = LocalModel.load(RuntimeConfig(cache_dir=args.cache_dir, threads=args.threads))
    per_layer, baseline = {}, {}
    for layer in args.layers:
        pre, post, seconds = run_edits(lm, cases, "rome", ROMEHyperParams(layer=layer))
        per_layer[layer], baseline = aggregate(pre, post)
        per_layer[layer]["edit_seconds_median"] = round(statistics.median(seconds), 2)
    best = max(per_layer, key=lambda layer: statistics.mean(per_layer[layer][k] for k in SCORED))
    columns = ["efficacy", "efficacy_top1", "generalization", "generalization_top1", "locality"]
    rows = [("unedited", *(f"{baseline[k]:.2f}" for k in columns), "")]
    rows += [(f"layer {layer}" + (" (best)" if layer == best else ""), *(f"{f[k]:.2f}" for k in columns),
              f"{f['edit_seconds_median']:.1f}") for layer, f in per_layer.items()]
    print_table(f"ROME per layer on {lm.model_id}, {len(cases)} CounterFact cases ({skipped} skipped)",
                ["", *columns, "s/edit"], rows)
    emit_json({"layers": {str(k): v for k, v in per_layer.items()}, "best": best, "baseline": baseline,
               "cases": len(cases), "skipped": skipped})


if __name__ == "__main__":
    main()
