"""Several users, each with their own deltas, in one decode loop: every row equals that user's solo reply.

A tiny llama built from a config covers both decode steps quickly; the real SmolLM2 covers the claim a
user would notice (three users with three adapters in one batch get their own replies).
"""

from __future__ import annotations

import pytest
import torch

from editing import GenerationSettings, InvalidRequest, LocalModel, LowRankDelta
from editing.batch_decode import BatchDecoder, decode_batch
from editing.generation import Decoder


def _delta(model: torch.nn.Module, name: str, rank: int, scale: float, gen: torch.Generator) -> LowRankDelta:
    """A random ``ΔW = B @ A`` on module ``name`` of ``model``, entries ~ N(0, scale²)."""
    n_out, n_in = model.get_submodule(name).weight.shape
    return LowRankDelta(name, torch.randn(rank, n_in, generator=gen) * scale,
                        torch.randn(n_out, rank, generator=gen) * scale)


def _solo(model, tokenizer, ids, settings, deltas, fast: bool = True) -> tuple[str, list[int]]:
    decoder = Decoder(model, tokenizer, fast_path=fast)
    text = "".join(decoder.stream(ids, settings, deltas))
    return text, list(decoder.last_token_ids)


def _tiny_rows(model: torch.nn.Module) -> list[list[LowRankDelta]]:
    gen = torch.Generator().manual_seed(1)
    return [
        [_delta(model, "model.layers.1.mlp.down_proj", 2, 0.3, gen)],
        [],  # this row runs on the base model
        [_delta(model, "model.layers.2.self_attn.q_proj", 3, 0.3, gen),
         _delta(model, "model.layers.2.self_attn.q_proj", 1, 0.3, gen),  # two deltas on one module: summed
         _delta(model, "model.layers.0.mlp.up_proj", 1, 0.3, gen)],
    ]


TINY_PROMPTS = ["Hello there, how are", "A much longer prompt about the sea, the sky and the wind over the hills", "Hi"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "model-forward"])
def test_tiny_batch_rows_equal_their_solo_runs(tiny_llama, smol_tokenizer, fast: bool) -> None:
    model = tiny_llama.eval()
    rows = _tiny_rows(model)
    prompts = [smol_tokenizer(t, return_tensors="pt")["input_ids"] for t in TINY_PROMPTS]
    assert len({p.shape[1] for p in prompts}) == 3  # mixed lengths: padding is really exercised
    settings = GenerationSettings(max_new_tokens=16, ignore_eos=True)
    batch = BatchDecoder(model, smol_tokenizer, fast_path=fast)
    texts = batch.run(prompts, settings, rows)
    assert batch.last_path == ("llama-fast" if fast else "model")
    for i, (ids, deltas) in enumerate(zip(prompts, rows)):
        text, tokens = _solo(model, smol_tokenizer, ids, settings, deltas, fast)
        assert batch.last_token_ids[i] == tokens, f"row {i} differs from its solo run"
        assert texts[i] == text
    base_of_row0 = _solo(model, smol_tokenizer, prompts[0], settings, [])[1]
    assert batch.last_token_ids[0] != base_of_row0  # row 0's delta really was applied, to row 0 only


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "model-forward"])
def test_a_row_that_stops_early_leaves_the_others_unchanged(tiny_llama, smol_tokenizer, fast: bool) -> None:
    model = tiny_llama.eval()
    rows = _tiny_rows(model)
    prompts = [smol_tokenizer(t, return_tensors="pt")["input_ids"] for t in TINY_PROMPTS]
    free = GenerationSettings(max_new_tokens=16, ignore_eos=True)
    first = _solo(model, smol_tokenizer, prompts[0], free, rows[0])[0]
    stop = first[len(first) // 3: len(first) // 3 + 3]  # occurs in row 0's reply after a few tokens
    assert stop.strip(), first
    settings = GenerationSettings(max_new_tokens=16, ignore_eos=True, stop=(stop,))
    batch = BatchDecoder(model, smol_tokenizer, fast_path=fast)
    events: list[tuple[str, int, str]] = []
    texts = batch.run(prompts, settings, rows, on_piece=lambda row, text: events.append(("piece", row, text)),
                      on_done=lambda row, reply: events.append(("done", row, reply)))
    for i, (ids, deltas) in enumerate(zip(prompts, rows)):
        assert texts[i] == _solo(model, smol_tokenizer, ids, settings, deltas, fast)[0]
    assert texts[0] == first[: first.index(stop)]  # row 0 stopped early...
    assert len(batch.last_token_ids[0]) < min(len(batch.last_token_ids[1]), len(batch.last_token_ids[2]))
    # ...and its reply was handed out then, while the other rows went on (a server ends that request's stream at
    # once); every row is handed out once, after its own last piece, with the reply run() returns.
    done = [(at, row, reply) for at, (kind, row, reply) in enumerate(events) if kind == "done"]
    assert sorted(row for _, row, _ in done) == [0, 1, 2] and all(reply == texts[row] for _, row, reply in done)
    last_piece = {row: at for at, (kind, row, _) in enumerate(events) if kind == "piece"}
    assert all(last_piece[row] < at for at, row, _ in done)
    done_at = {row: at for at, row, _ in done}
    assert done_at[0] < min(last_piece[1], last_piece[2])


@pytest.mark.parametrize("join_after, later", [(3, [0, 2]), (1, [1]), (6, [2, 1])],
                         ids=["short-and-long-join", "longer-than-the-cache-joins", "two-join-when-the-first-ended"])
def test_rows_that_join_a_running_batch_equal_their_solo_runs(tiny_llama, smol_tokenizer, join_after: int,
                                                              later: list[int]) -> None:
    # Continuous batching: requests that arrive while a batch decodes join it at the next step. Each joined row
    # (its own deltas, prompts shorter and longer than the batch's cache so far) gives exactly its solo tokens,
    # and the rows already running are not disturbed.
    model = tiny_llama.eval()
    rows = _tiny_rows(model)
    prompts = [smol_tokenizer(t, return_tensors="pt")["input_ids"] for t in TINY_PROMPTS]
    first = [i for i in range(3) if i not in later]
    settings = GenerationSettings(max_new_tokens=12 if join_after < 6 else 6, ignore_eos=True)
    steps = 0

    def admit(active: int) -> list:
        nonlocal steps
        steps += 1
        if steps != join_after:
            return []
        return [(prompts[i], rows[i]) for i in later]

    batch = BatchDecoder(model, smol_tokenizer)
    texts = batch.run([prompts[i] for i in first], settings, [rows[i] for i in first], admit=admit)
    assert batch.joined == len(later) and len(texts) == 3
    for row, i in enumerate(first + later):
        text, tokens = _solo(model, smol_tokenizer, prompts[i], settings, rows[i])
        assert batch.last_token_ids[row] == tokens, f"prompt {i} (batch row {row}) differs from its solo run"
        assert texts[row] == text


@pytest.mark.parametrize("threshold", [1, 16], ids=["compact-at-every-leave", "default-threshold"])
def test_a_long_continuous_batch_keeps_its_cache_short_and_every_row_its_solo_reply(
        tiny_llama, smol_tokenizer, monkeypatch, threshold: int) -> None:
    # A server under steady load keeps one decode loop running while requests come and go. The rows still
    # decoding then start ever further right in the KV cache; without compaction every step attends over all
    # the columns since the loop began (slower each step, and the buffer grows for as long as the load lasts).
    import editing.generation as generation

    monkeypatch.setattr(generation, "_COMPACT_MIN_COLUMNS", threshold)
    model = tiny_llama.eval()
    rows = _tiny_rows(model)
    prompts = [smol_tokenizer(t, return_tensors="pt")["input_ids"] for t in TINY_PROMPTS]
    settings = GenerationSettings(max_new_tokens=8, ignore_eos=True)
    order = [i % 3 for i in range(80)]  # request k: prompt order[k], with its deltas
    queue = list(order[1:])
    steps = 0

    def admit(active: int) -> list:  # one new request every 3 steps, two at once every 7th
        nonlocal steps
        steps += 1
        take = 2 if steps % 7 == 0 else 1 if steps % 3 == 0 else 0
        joining, queue[:] = queue[:take], queue[take:]
        return [(prompts[i], rows[i]) for i in joining]

    widest = 0
    call = generation._LlamaStep.__call__

    def spy(self, token, position):
        nonlocal widest
        widest = max(widest, position + 1)
        return call(self, token, position)

    monkeypatch.setattr(generation._LlamaStep, "__call__", spy)
    batch = BatchDecoder(model, smol_tokenizer)
    texts = batch.run([prompts[order[0]]], settings, [rows[order[0]]], admit=admit)
    assert len(texts) == len(order) and batch.joined == len(order) - 1
    assert steps > 100  # the loop outlived every request in it many times over
    longest = max(p.shape[1] for p in prompts)
    assert widest <= longest + settings.max_new_tokens + threshold + 8, widest  # not the ~steps it would grow to
    for i in range(3):
        text, tokens = _solo(model, smol_tokenizer, prompts[i], settings, rows[i])
        for row in (r for r, k in enumerate(order) if k == i):
            assert batch.last_token_ids[row] == tokens, f"request {row} (prompt {i}) differs from its solo run"
            assert texts[row] == text


def test_rows_leaving_and_joining_a_running_batch_do_not_copy_the_rows_that_stay(
        tiny_llama, smol_tokenizer, monkeypatch) -> None:
    # Under steady load a row leaves or joins every few steps. Each used to copy the whole KV cache of the batch
    # (on SmolLM2 with 4 rows of ~450 columns, 5-10 ms of the decode loop's own core for each join and each leave,
    # against ~45 ms a step); now a join writes into a free row of the buffers and a leave moves only the rows
    # after it, so the buffers are made anew only when a join finds no free row or no room.
    import editing.generation as generation

    model = tiny_llama.eval()
    rows = _tiny_rows(model)
    prompts = [smol_tokenizer(t, return_tensors="pt")["input_ids"] for t in TINY_PROMPTS]
    settings = GenerationSettings(max_new_tokens=8, ignore_eos=True)
    order = [i % 3 for i in range(60)]
    queue = list(order[1:])

    def admit(active: int) -> list:  # keeps about three rows decoding: one joins for each that left
        if active >= 3 or not queue:
            return []
        joining, queue[:] = queue[:1], queue[1:]
        return [(prompts[i], rows[i]) for i in joining]

    made_anew = 0
    join = generation._LlamaStep.join

    def spy(self, *args, **kwargs):
        nonlocal made_anew
        before = self.keys.untyped_storage().data_ptr()
        column = join(self, *args, **kwargs)
        made_anew += self.keys.untyped_storage().data_ptr() != before
        return column

    monkeypatch.setattr(generation._LlamaStep, "join", spy)
    batch = BatchDecoder(model, smol_tokenizer)
    texts = batch.run([prompts[order[0]]], settings, [rows[order[0]]], admit=admit)
    assert batch.joined == len(order) - 1
    assert made_anew <= 4, f"{made_anew} of {batch.joined} joins made the KV buffers anew"
    for i in range(3):
        text, tokens = _solo(model, smol_tokenizer, prompts[i], settings, rows[i])
        for row in (r for r, k in enumerate(order) if k == i):
            assert batch.last_token_ids[row] == tokens, f"request {row} (prompt {i}) differs from its solo run"
            assert texts[row] == text


def test_real_model_three_users_in_one_batch_get_their_solo_replies(local_model: LocalModel) -> None:
    model, tok = local_model.model, local_model.tokenizer
    gen = torch.Generator().manual_seed(0)
    users = [  # three different adapters, strong enough to change the reply
        [_delta(model, f"model.layers.{layer}.mlp.down_proj", 2, 0.08, gen) for layer in (3, 4)],
        [_delta(model, "model.layers.10.self_attn.q_proj", 4, 0.1, gen),
         _delta(model, "model.layers.12.self_attn.v_proj", 4, 0.1, gen)],
        [_delta(model, f"model.layers.{layer}.mlp.up_proj", 2, 0.3, gen) for layer in (2, 20)],
        [],  # a user without an adapter: the base model's reply
    ]
    questions = ["What is the capital of France?", "Write a short poem about the sea.",
                 "List three uses of a paperclip.", "Say hello."]
    prompts = [local_model.encode_chat([{"role": "user", "content": q}]) for q in questions]
    settings = GenerationSettings(max_new_tokens=24)
    batch = BatchDecoder(model, tok)
    texts = batch.run(prompts, settings, users)
    assert batch.last_path == "llama-fast"
    for i, (ids, deltas) in enumerate(zip(prompts, users)):
        text, tokens = _solo(model, tok, ids, settings, deltas)
        assert batch.last_token_ids[i] == tokens, f"user {i}: {texts[i]!r} vs solo {text!r}"
        assert texts[i] == text
        if deltas:  # each adapter visibly changes its user's reply
            assert text != _solo(model, tok, ids, settings, [])[0]
    assert texts[3] == local_model.generate([{"role": "user", "content": questions[3]}], settings)


def test_decode_batch_of_one_equals_decode_stream(tiny_llama, smol_tokenizer) -> None:
    model = tiny_llama.eval()
    ids = smol_tokenizer("Once upon a time", return_tensors="pt")["input_ids"]
    settings = GenerationSettings(max_new_tokens=12, ignore_eos=True)
    assert decode_batch(model, smol_tokenizer, [ids], settings) == [_solo(model, smol_tokenizer, ids, settings, [])[0]]


@pytest.mark.parametrize("prompts, rows, message", [
    ([], None, "non-empty list"),
    ([torch.ones(2, 3, dtype=torch.long)], None, r"prompts\[0\].*shape \(1, T\)"),
    ([torch.ones(1, 0, dtype=torch.long)], None, r"prompts\[0\]"),
    ([torch.ones(1, 3, dtype=torch.long)] * 2, [[]], "2 prompts"),
    ([torch.ones(1, 3, dtype=torch.long)], ["not a delta"], r"deltas_per_row\[0\]"),
])
def test_bad_batches_raise_a_clear_error(tiny_llama, smol_tokenizer, prompts, rows, message) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_batch(tiny_llama.eval(), smol_tokenizer, prompts, GenerationSettings(max_new_tokens=2), rows)


def test_rows_with_deltas_of_different_shapes_on_one_module_are_refused(tiny_llama, smol_tokenizer) -> None:
    name = "model.layers.1.mlp.down_proj"  # (64, 128)
    good = LowRankDelta(name, torch.zeros(1, 128), torch.zeros(64, 1))
    bad = LowRankDelta(name, torch.zeros(1, 100), torch.zeros(64, 1))
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(InvalidRequest, match="disagree on the module's shape"):
        decode_batch(tiny_llama.eval(), smol_tokenizer, [ids, ids], GenerationSettings(max_new_tokens=2),
                     [[good], [bad]])
