"""Serving per-user adapters on one base model: switch-in time, size on disk, batched vs serial decoding.

Every figure beside its baseline, measured in the same run:

* ``switch_ms`` — making a user's stored adapter active for a request: ``AdapterStore.view`` on a cold store
  (read and parse the version folder) plus the extra time-to-first-token of a reply with the adapter over
  the same reply on the base model. Baseline: ``full_load_ms``, loading a full copy of the model from the
  converted folder — what a naive per-user model costs. Goal ≤ 50 ms.
* ``adapter_mb`` — one user's adapter folder on disk: ``--edits`` (50) rank-one edits on ``down_proj`` of
  layers 3-6 plus a LoRA of rank ``--rank`` (8) on q/v of every layer.
* ``batched_over_serial`` — tokens/s of ``--users`` (4) users with 4 different adapters (as above, random
  values) in one decode loop (:func:`editing.batch_decode.decode_batch`) ÷ tokens/s of the same 4 replies one
  after another (:class:`editing.generation.Decoder`, the fast step). Each reply is exactly ``--tokens``
  greedy tokens; prompts differ in length. Goal ≥ 2.5×. ``agree`` checks the batch rows equal the serial
  replies token for token.
* ``refresh_s`` — one refresh of a user's style adapter as the worker runs it (:func:`editing.oppu.refresh_config`:
  LoRA r 8 on q/v of the upper half of the layers, 2 epochs, batches of 8, 128 tokens) on ``--refresh-turns``
  (200) of their turns, each after the turns before it, plus the 6 anchor examples (generated before the clock
  starts, as the worker does once per process: ``refresh_anchors_s``), continuing from their current version. Baseline: a full fine-tune of the same model on the same
  batches (AdamW on every weight) — seconds per step measured over 3 steps, scaled to the refresh's steps.
  Goal ≤ 120 s on this CPU.

    python bench/adapter_speed.py [--tokens 48] [--users 4] [--repeats 2] [--threads N] [--json]
                                  [--refresh-turns 200] [--cache-dir DIR] [--model PATH] [--device cpu|cuda]
                                  [--limit N]

``--limit N`` caps ``--tokens`` and ``--refresh-turns`` for a quick run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, median, parser, print_table  # noqa: E402

QUESTIONS = ["Tell me a long story about a dragon who learns to cook.",
             "Explain how a bicycle works, step by step, in detail.",
             "Write a letter to a friend about your summer holidays by the sea.",
             "Describe your favourite city and why you would like to live there."]


def _user_deltas(model, seed: int, edits: int, rank: int) -> list:
    """``edits`` rank-one edits on down_proj (1 % of ‖W‖ each) + a rank-``rank`` LoRA on q/v of every layer."""
    import torch

    from editing import LowRankDelta

    gen = torch.Generator().manual_seed(seed)
    deltas = []
    for i in range(edits):
        name = f"model.layers.{3 + i % 4}.mlp.down_proj"
        weight = model.get_submodule(name).weight.detach().float().cpu()  # (out, in)
        key, value = torch.randn(1, weight.shape[1], generator=gen), torch.randn(weight.shape[0], 1, generator=gen)
        deltas.append(LowRankDelta(name, key / key.norm(), value * (0.01 * weight.norm() / value.norm())))
    for layer in range(model.config.num_hidden_layers if rank else 0):
        for proj in ("q_proj", "v_proj"):
            name = f"model.layers.{layer}.self_attn.{proj}"
            n_out, n_in = model.get_submodule(name).weight.shape
            deltas.append(LowRankDelta(name, torch.randn(rank, n_in, generator=gen) * 0.01,
                                       torch.randn(n_out, rank, generator=gen) * 0.01))
    return deltas


def _folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def _first_token_s(lm, ids, deltas, repeats: int) -> float:
    """Median wall time of a one-token reply (prefill + first token), with ``deltas``."""
    from editing.generation import Decoder, GenerationSettings

    decoder, times = Decoder(lm.model, lm.tokenizer), []
    for _ in range(repeats + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        for _ in decoder.stream(ids, GenerationSettings(max_new_tokens=1, ignore_eos=True), deltas=deltas):
            pass
        times.append(time.perf_counter() - t0)
    return median(times[1:])


def _switch(lm, root: Path, users: list, ids, repeats: int) -> dict:
    """Cold ``view`` time, and the adapter's extra time-to-first-token over the base model's."""
    from editing import AdapterStore

    cold = []
    for _ in range(repeats):
        store = AdapterStore(root)  # a fresh store: nothing cached, the folder is read and parsed
        t0 = time.perf_counter()
        view = store.view(users[0], base_model_id=lm.model_id)
        cold.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    store.view(users[0], base_model_id=lm.model_id)
    warm = time.perf_counter() - t0
    extra = _first_token_s(lm, ids, view.deltas, repeats) - _first_token_s(lm, ids, (), repeats)
    return {"view_cold_ms": 1000 * median(cold), "view_warm_ms": 1000 * warm,
            "first_token_extra_ms": 1000 * extra, "deltas": len(view.deltas)}


def _full_load_ms(lm, repeats: int) -> float:
    """Loading a full copy of the model from the converted folder (weights + module construction)."""
    from transformers import AutoModelForCausalLM

    from editing.model_cache import OFFLINE_LOAD

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        copy = AutoModelForCausalLM.from_pretrained(str(lm.source), dtype=lm.plan.dtype, **OFFLINE_LOAD)
        copy.to(lm.plan.device).eval()
        times.append(time.perf_counter() - t0)
        del copy
    return 1000 * median(times)


def _batched_vs_serial(lm, views: list, tokens: int, repeats: int) -> dict:
    from editing.batch_decode import BatchDecoder
    from editing.generation import Decoder, GenerationSettings

    settings = GenerationSettings(max_new_tokens=tokens, ignore_eos=True)
    prompts = [lm.encode_chat([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
               for i in range(len(views))]
    deltas = [v.deltas for v in views]
    serial_decoder, batch_decoder = Decoder(lm.model, lm.tokenizer), BatchDecoder(lm.model, lm.tokenizer)

    def serial() -> list[list[int]]:
        out = []
        for ids, d in zip(prompts, deltas):
            for _ in serial_decoder.stream(ids, settings, deltas=d):
                pass
            out.append(list(serial_decoder.last_token_ids))
        return out

    def batched() -> list[list[int]]:
        batch_decoder.run(prompts, settings, deltas)
        return [list(ids) for ids in batch_decoder.last_token_ids]

    runs = {"serial": serial, "batched": batched}
    seconds = {name: [] for name in runs}
    produced = {}
    for _ in range(repeats):  # interleaved, so background load hits both alike
        for name, run in runs.items():
            t0 = time.perf_counter()
            produced[name] = run()
            seconds[name].append(time.perf_counter() - t0)
    total = tokens * len(views)
    rate = {name: total / median(s) for name, s in seconds.items()}
    agree = sum(a == b for a, b in zip(produced["serial"], produced["batched"]))
    return {"serial_tok_s": rate["serial"], "batched_tok_s": rate["batched"],
            "ratio": rate["batched"] / rate["serial"], "rows_agree": f"{agree}/{len(views)}",
            "path": batch_decoder.last_path, "prompt_tokens": [p.shape[1] for p in prompts]}


_SUBJECTS = ["my sister", "the neighbour's dog", "our team at work", "the bakery on the corner", "my old bike",
             "the new manager", "my grandmother", "the night bus", "the garden", "my flatmate"]
_HAPPENINGS = ["kept me up all night again", "surprised everyone this morning", "is driving me a bit crazy lately",
               "turned out better than I expected", "reminded me of our trip to the coast",
               "needs fixing before the weekend", "made the whole day worth it", "was the talk of the office"]
_ENDINGS = ["honestly.", "no joke!", "can you believe it?", "so that's my week.", "anyway, how are you?",
            "what would you do?"]


def _history(n: int) -> list[dict]:
    """``n`` user turns (distinct, everyday), each answered by a short assistant turn."""
    dialogue = []
    for i in range(n):
        text = (f"{_SUBJECTS[i % len(_SUBJECTS)].capitalize()} {_HAPPENINGS[(i // 3) % len(_HAPPENINGS)]}, "
                f"{_ENDINGS[(i // 7) % len(_ENDINGS)]} (day {i + 1})")
        dialogue += [{"role": "user", "content": text}, {"role": "assistant", "content": "Tell me more about it."}]
    return dialogue


def _refresh(lm, turns: int) -> dict:
    """A refresh on ``turns`` new turns (from a version trained on 8 earlier ones) vs full fine-tuning steps."""
    import math

    import torch

    import dataclasses

    from editing.oppu import REFRESH_CONTEXT_TURNS, anchor_examples, build_examples, refresh_config, train_adapter
    from editing.oppu.train import _batches, _encode_all, _pad_id

    config = refresh_config(int(lm.model.config.num_hidden_layers))  # what the worker's refresh uses
    history = _history(turns + 8)
    old = build_examples(history[:16], context_turns=REFRESH_CONTEXT_TURNS)
    new = build_examples(history[16:], context_turns=REFRESH_CONTEXT_TURNS)[:turns]
    t0 = time.perf_counter()
    anchors = anchor_examples(lm.model, lm.tokenizer)  # the worker generates them once per process, not per refresh
    anchors_s = time.perf_counter() - t0
    new = new + anchors
    first = train_adapter(lm.model, lm.tokenizer, old, dataclasses.replace(config, epochs=1), base_model_id=lm.model_id)
    t0 = time.perf_counter()
    refreshed = train_adapter(lm.model, lm.tokenizer, new, dataclasses.replace(config, replay_fraction=0.0),
                              init=first, base_model_id=lm.model_id)
    refresh_s = time.perf_counter() - t0
    steps = len(refreshed.losses)
    # Baseline: full fine-tuning on the same batches (a copy of the model: the served one is never trained).
    rows = _encode_all(lm.tokenizer, new, config.max_tokens)
    full = __import__("copy").deepcopy(lm.model).train()
    optimizer = torch.optim.AdamW(full.parameters(), lr=1e-5)
    batches = _batches(rows, config.batch_size, _pad_id(lm.tokenizer), lm.plan.device, range(len(rows)))
    times = []
    for _, batch in zip(range(4), batches):  # the first is a warm-up
        t1 = time.perf_counter()
        full(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t1)
    del full, optimizer
    full_step = median(times[1:])
    return {"refresh_s": refresh_s, "steps": steps, "examples": len(new), "anchors": len(anchors),
            "anchors_s": anchors_s, "s_per_step": refresh_s / steps,
            "full_ft_step_s": full_step, "full_ft_s": full_step * steps,
            "loss": (refreshed.losses[0], refreshed.losses[-1]), "epochs": config.epochs,
            "expected_steps": math.ceil(len(rows) / config.batch_size) * config.epochs}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--tokens", type=int, default=48, help="new tokens per reply (exactly this many)")
    p.add_argument("--users", type=int, default=4, help="users (rows) in the batch")
    p.add_argument("--edits", type=int, default=50, help="rank-one edits per user")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank on q/v per user (0: none)")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds (median reported)")
    p.add_argument("--refresh-turns", type=int, default=200, help="new turns in the timed refresh (0: skip it)")
    p.add_argument("--limit", type=int, default=None, help="cap on --tokens and --refresh-turns, for a quick run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--cache-dir", default="/tmp/pllm-models", help="converted-model cache")
    p.add_argument("--model", default=None, help="model folder / .gguf (default: the packaged SmolLM2)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: accelerator if present)")
    args = p.parse_args()
    tokens = min(args.tokens, args.limit) if args.limit else args.tokens
    turns = min(args.refresh_turns, args.limit) if args.limit else args.refresh_turns

    import torch

    from editing import AdapterStore, LocalModel, RuntimeConfig

    lm = LocalModel.load(RuntimeConfig(model=args.model, cache_dir=args.cache_dir, device=args.device,
                                       threads=args.threads))
    with tempfile.TemporaryDirectory(prefix="pllm-bench-adapters-") as tmp:
        root = Path(tmp)
        store = AdapterStore(root)
        users = [f"bench-user-{i}" for i in range(args.users)]
        for seed, user in enumerate(users):
            store.publish(user, _user_deltas(lm.model, seed, args.edits, args.rank), base_model_id=lm.model_id)
        adapter_mb = _folder_mb(next(f for f in root.rglob("v000001")))
        views = [store.view(u, base_model_id=lm.model_id) for u in users]
        ids = lm.encode_chat([{"role": "user", "content": QUESTIONS[0]}])
        switch = _switch(lm, root, users, ids, args.repeats)
    full_load_ms = _full_load_ms(lm, args.repeats)
    batch = _batched_vs_serial(lm, views, tokens, args.repeats)
    refresh = _refresh(lm, turns) if turns else None
    switch_ms = switch["view_cold_ms"] + max(0.0, switch["first_token_extra_ms"])

    print(f"{args.users} users, {args.edits} rank-one edits + LoRA r={args.rank} on q/v each, {tokens} tokens per "
          f"reply, torch threads {torch.get_num_threads()}, device {lm.plan.describe()}")
    print_table("switching a user's adapter in vs loading a model copy", ["what", "ms"], [
        ("AdapterStore.view, cold", f"{switch['view_cold_ms']:.1f}"),
        ("AdapterStore.view, warm (LRU)", f"{switch['view_warm_ms']:.2f}"),
        ("extra time to first token", f"{switch['first_token_extra_ms']:.1f}"),
        ("switch_ms (cold view + extra)", f"{switch_ms:.1f}"),
        ("full model copy load (baseline)", f"{full_load_ms:.0f}"),
    ])
    print_table("4 users, 4 adapters", ["variant", "tok/s", "ratio"], [
        ("one after another (baseline)", f"{batch['serial_tok_s']:.1f}", "1.00"),
        (f"one batch ({batch['path']})", f"{batch['batched_tok_s']:.1f}", f"{batch['ratio']:.2f}"),
    ])
    if refresh is not None:
        print_table(f"refreshing a style adapter on {refresh['examples'] - refresh['anchors']} turns + {refresh['anchors']} "
                    f"anchors x {refresh['epochs']} epochs "
                    f"({refresh['steps']} steps)", ["variant", "s", "s/step", "ratio"], [
            ("full fine-tune, same steps (baseline)", f"{refresh['full_ft_s']:.1f}", f"{refresh['full_ft_step_s']:.2f}",
             "1.00"),
            ("LoRA refresh (measured)", f"{refresh['refresh_s']:.1f}", f"{refresh['s_per_step']:.2f}",
             f"{refresh['refresh_s'] / refresh['full_ft_s']:.2f}"),
        ])
    emit_json({"refresh_s": round(refresh["refresh_s"], 1) if refresh else None,
               "refresh_steps": refresh["steps"] if refresh else None,
               "refresh_turns": refresh["examples"] - refresh["anchors"] if refresh else 0,
               "refresh_anchors_s": round(refresh["anchors_s"], 1) if refresh else None,
               "full_ft_s": round(refresh["full_ft_s"], 1) if refresh else None,
               "adapter_mb": round(adapter_mb, 2), "switch_ms": round(switch_ms, 1),
               "full_load_ms": round(full_load_ms, 1), "batched_over_serial": round(batch["ratio"], 2),
               "view_cold_ms": round(switch["view_cold_ms"], 1), "view_warm_ms": round(switch["view_warm_ms"], 2),
               "first_token_extra_ms": round(switch["first_token_extra_ms"], 1),
               "serial_tok_s": round(batch["serial_tok_s"], 2), "batched_tok_s": round(batch["batched_tok_s"], 2),
               "rows_agree": batch["rows_agree"], "batch_path": batch["path"], "users": args.users,
               "tokens": tokens, "edits": args.edits, "rank": args.rank, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
