"""Model load time: cold (convert the packaged GGUF into a fresh cache, then load) vs from that cache.

Cold = ``LocalModel.load(RuntimeConfig(cache_dir=<new temp dir>))``, conversion included. Cached = a
second ``LocalModel.load`` on the same dir with fresh objects, median of ``--repeats``.

    python bench/model_load.py [--repeats 3] [--json]
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, median, parser, print_table  # noqa: E402


def _timed_load(cache_dir: Path) -> float:
    from editing import LocalModel, RuntimeConfig

    t0 = time.perf_counter()
    lm = LocalModel.load(RuntimeConfig(cache_dir=cache_dir))
    seconds = time.perf_counter() - t0
    del lm
    gc.collect()
    return seconds


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=3, help="cached loads (median reported)")
    args = p.parse_args()
    import transformers  # noqa: F401 - imported up front so neither timing pays for it

    with tempfile.TemporaryDirectory(prefix="pllm-load-") as tmp:
        gguf_s = _timed_load(Path(tmp))
        cached = [_timed_load(Path(tmp)) for _ in range(args.repeats)]
    cached_s = median(cached)
    print_table("model load (SmolLM2-135M-Instruct)", ["path", "seconds"],
                [("GGUF → convert → load (cold)", f"{gguf_s:.2f}"),
                 (f"converted cache (median of {args.repeats})", f"{cached_s:.2f}"),
                 ("ratio", f"{gguf_s / cached_s:.1f}×")])
    emit_json({"gguf_s": round(gguf_s, 3), "cached_s": round(cached_s, 3), "ratio": round(gguf_s / cached_s, 2),
               "cached_runs_s": [round(s, 3) for s in cached]})


if __name__ == "__main__":
    main()
