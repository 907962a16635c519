"""Write a model folder built from a config with random weights, beside a real model's tokenizer.

For the device checks (``bench/gpu_check.sh``): the packaged SmolLM2 (98 MB) is larger than what travels to the GPU
machine (64 MiB), so only its config and tokenizer travel and the model is built there, with the same architecture
(or a resized one) and random weights. Speeds, memory, training steps and batching agreement are measured on it;
nothing about answer quality is.

    python bench/tiny_model.py --like FOLDER --out DIR [--layers N] [--hidden H] [--intermediate I] [--heads A]
                               [--kv-heads K] [--dtype bfloat16|float32] [--seed 0] [--json]

``--like`` is a transformers model folder (e.g. the converted SmolLM2 in the model cache); only its
``config.json`` and tokenizer files are read.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "vocab.json", "merges.txt")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--like", required=True, help="model folder whose config.json and tokenizer files are used")
    p.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    p.add_argument("--layers", type=int, default=None, help="num_hidden_layers (default: as --like)")
    p.add_argument("--hidden", type=int, default=None, help="hidden_size (default: as --like)")
    p.add_argument("--intermediate", type=int, default=None, help="intermediate_size (default: as --like)")
    p.add_argument("--heads", type=int, default=None, help="num_attention_heads (default: as --like)")
    p.add_argument("--kv-heads", type=int, default=None, help="num_key_value_heads (default: as --like)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="dtype of the saved weights")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    like, out = Path(args.like), Path(args.out)
    if not (like / "config.json").is_file():
        raise SystemExit(f"{like} has no config.json: pass a transformers model folder as --like")
    config = AutoConfig.from_pretrained(str(like), local_files_only=True)
    for key, value in (("num_hidden_layers", args.layers), ("hidden_size", args.hidden),
                       ("intermediate_size", args.intermediate), ("num_attention_heads", args.heads),
                       ("num_key_value_heads", args.kv_heads)):
        if value is not None:
            setattr(config, key, value)
    if args.hidden is not None or args.heads is not None:
        config.head_dim = config.hidden_size // config.num_attention_heads
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out))
    copied = [name for name in TOKENIZER_FILES if (like / name).is_file() and shutil.copy(like / name, out / name)]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {config.model_type}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{n_params / 1e6:.1f} M parameters (random), {args.dtype}, tokenizer files {copied}, "
          f"{time.perf_counter() - t0:.1f} s")
    emit_json({"out": str(out), "params_m": round(n_params / 1e6, 1), "layers": config.num_hidden_layers,
               "hidden": config.hidden_size, "dtype": args.dtype})


if __name__ == "__main__":
    main()
