"""A user's knowledge edits computed, published and served on the model's own device and dtype (the device check).

Loads ``--model`` through :class:`editing.LocalModel` (on an accelerator: bf16), writes two facts of one user into
that user's model with :class:`editing.personal.KnowledgeEditor` (the default method, its check on, as the
model-update worker does), then answers each fact's chat question with the user's published adapter and without
it. Also times one edit of each method (``rome``, ``memit``, ``ft_l``) on the same model. On a model with random
weights (``bench/tiny_model.py``) this shows that the code runs there and how long it takes, not edit quality.

    python bench/gpu_edit.py --model FOLDER [--device cuda] [--dtype bfloat16] [--no-check] [--facts 2] [--json]

``--no-check`` publishes the edits without their check (efficacy and locality on real answers: on random weights
every edit fails it, and nothing would be published or served).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser, print_table  # noqa: E402

FACTS = [("lives_in", None, "Lisbon"), ("favorite", "band", "Radiohead")]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="transformers model folder")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: accelerator if present)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, ... (default: bf16 on an accelerator, else fp32)")
    p.add_argument("--cache-dir", default="/tmp/pllm-models")
    p.add_argument("--no-check", action="store_true", help="publish without the edit check (random weights)")
    p.add_argument("--facts", type=int, default=len(FACTS), choices=range(1, len(FACTS) + 1))
    args = p.parse_args()

    import torch

    from editing import AdapterStore, GenerationSettings, LocalModel, RuntimeConfig
    from editing.fact_edits import edit_request_for
    from editing.methods import METHODS, default_hparams, get_method, DEFAULT_METHOD
    from editing.personal import KnowledgeEditor
    from editing.user_edits import EditRegistry

    lm = LocalModel.load(RuntimeConfig(model=args.model, device=args.device, dtype=args.dtype,
                                       cache_dir=args.cache_dir))
    facts = [SimpleNamespace(id=f"fact_{i}", subject="user", relation=r, category=c, object=o, kind="fact",
                             confidence=0.9, valid_to=None) for i, (r, c, o) in enumerate(FACTS[: args.facts])]
    settings = GenerationSettings(max_new_tokens=12)
    rows, timings, deltas_on = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="pllm-gpu-edit-") as home:
        adapters = AdapterStore(Path(home) / "adapters")
        editor = KnowledgeEditor(lm, EditRegistry(Path(home)), adapters, check=not args.no_check)
        report = editor.sync("ana", facts)
        view = adapters.view("ana", base_model_id=lm.model_id)
        for fact in facts:
            question = edit_request_for(fact).chat_questions[0]
            turns = [{"role": "user", "content": question}]
            rows.append((question, fact.object, lm.generate(turns, settings).strip()[:40],
                         lm.generate(turns, settings, view=view).strip()[:40] if view else "(no adapter)"))
        editor.registry.close()
        for name in ("rome", "memit", "ft_l"):
            method = get_method(name)
            hparams = default_hparams() if name == DEFAULT_METHOD else method.hparams()
            request = edit_request_for(facts[0])
            t0 = time.perf_counter()
            (result,) = method.compute(lm.model, lm.tokenizer, [request], hparams, stats=None, preserve=None)
            if lm.plan.device.type == "cuda":
                torch.cuda.synchronize()
            timings[name] = time.perf_counter() - t0
            deltas_on[name] = str(result.deltas[0].A.device)
    print(f"device {lm.plan.describe()}, model {lm.model_id}; methods known: {sorted(METHODS)}")
    print(f"sync: {report.summary()}")
    print_table("the user's questions, base model vs the user's model", ["question", "fact", "base", "user's model"],
                rows)
    print_table("one edit per method (no key statistics)", ["method", "s"],
                [(k, f"{v:.2f}") for k, v in timings.items()])
    emit_json({"device": lm.plan.describe(), "added": len(report.added), "rejected": len(report.rejected),
               "version": report.version, "sync_s": round(report.seconds, 2),
               "rejected_notes": [r.note for r in report.rejected],
               "s_per_edit": {k: round(v, 2) for k, v in timings.items()}, "deltas_on": deltas_on,
               "answers": [{"q": q, "fact": f, "base": b, "user": u} for q, f, b, u in rows]})


if __name__ == "__main__":
    main()
