"""Knowledge editing on CounterFact with SmolLM2: efficacy, generalization, locality, each beside the unedited model.

Each case is edited alone on the base model (the deltas are hooked in only while that case is scored;
the base weights never change). Cases whose subject does not occur in the prompt are skipped (counted).

    python bench/edit_counterfact.py [--data ../shared/data] [--limit 10] [--method rome|memit]
                                     [--layers 4] [--mom2-update-weight 1500]
                                     [--threads 1] [--json]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser, print_table  # noqa: E402
from bench._data import DEFAULT_DATA  # noqa: E402
from bench._editing import aggregate, load_counterfact, run_edits  # noqa: E402

COUNTERFACT = Path("knowledge_editing") / "counterfact-edit-1k.json"


def hparams_for(method: str, layers: list[int] | None) -> Any:  # ROMEHyperParams | MEMITHyperParams
    """The method's SmolLM2 defaults, with ``layers`` in place of the default layer(s) when given."""
    from editing import get_method

    cls = get_method(method).hparams
    if not layers:
        return cls()
    if method == "rome":
        if len(layers) != 1:
            sys.exit(f"ROME edits one layer; got --layers {layers}")
        return cls(layer=layers[0])
    return cls(layers=tuple(layers))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared evaluation data folder")
    p.add_argument("--limit", type=int, default=10, help="number of CounterFact cases")
    p.add_argument("--method", default="rome", choices=["rome", "memit"])
    p.add_argument("--layers", type=int, nargs="*", help="layer(s) to edit (default: the method's)")
    p.add_argument("--mom2-update-weight", type=float, default=None, help="MEMIT's λ (default: the method's)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--cache-dir", type=Path, default=Path(".pllm-home") / "models")
    args = p.parse_args()
    from dataclasses import replace

    from editing import LocalModel, RuntimeConfig

    cases, skipped = load_counterfact(args.data / COUNTERFACT, args.limit)
    hparams = hparams_for(args.method, args.layers)
    if args.mom2_update_weight is not None:
        if args.method != "memit":
            sys.exit("--mom2-update-weight is MEMIT's λ; ROME has none")
        hparams = replace(hparams, mom2_update_weight=args.mom2_update_weight)
    lm = LocalModel.load(RuntimeConfig(cache_dir=args.cache_dir, threads=args.threads))
    pre, post, seconds = run_edits(lm, cases, args.method, hparams)
    after, before = aggregate(pre, post)
    rows = [(k, f"{before[k]:.3f}", f"{after[k]:.3f}") for k in after]
    print_table(f"CounterFact, {args.method} on {lm.model_id}, {len(cases)} cases ({skipped} skipped)",
                ["figure", "unedited", "edited"], rows)
    emit_json({**after, "baseline": before, "method": args.method, "hparams": _describe(hparams),
               "cases": len(cases), "skipped": skipped, "edit_seconds_median": round(statistics.median(seconds), 2)})


def _describe(hparams: Any) -> dict[str, Any]:
    described = {"layers": list(getattr(hparams, "layers", [getattr(hparams, "layer", None)]))}
    if hasattr(hparams, "mom2_update_weight"):
        described["mom2_update_weight"] = hparams.mom2_update_weight
    return described


if __name__ == "__main__":
    main()
