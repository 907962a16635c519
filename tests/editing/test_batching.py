"""LocalModel serving several users at once: generate_batch and the request batcher, on the real SmolLM2."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from editing import AdapterStore, GenerationSettings, InvalidRequest, LocalModel, LowRankDelta

SETTINGS = GenerationSettings(max_new_tokens=16)
QUESTIONS = ["What is the capital of France?", "Name a colour.", "Write a short poem about the sea."]


@pytest.fixture()
def views(local_model: LocalModel, tmp_path: Path) -> list:
    """Three users' published adapters (random deltas that change replies), read back through the store."""
    store = AdapterStore(tmp_path / "adapters")
    gen = torch.Generator().manual_seed(3)
    out = []
    for i, (layer, path) in enumerate([(3, "mlp.down_proj"), (9, "self_attn.v_proj"), (15, "mlp.up_proj")]):
        name = f"model.layers.{layer}.{path}"
        n_out, n_in = local_model.model.get_submodule(name).weight.shape
        delta = LowRankDelta(name, torch.randn(2, n_in, generator=gen) * 0.3, torch.randn(n_out, 2, generator=gen) * 0.3)
        store.publish(f"user-{i}", [delta], base_model_id=local_model.model_id)
        out.append(store.view(f"user-{i}", base_model_id=local_model.model_id))
    return out


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def test_generate_batch_gives_each_user_their_own_reply(local_model: LocalModel, views: list) -> None:
    requests = [(_messages(q), v) for q, v in zip(QUESTIONS, views)] + [(_messages(QUESTIONS[2]), None)]
    replies = local_model.generate_batch(requests, SETTINGS)
    solo = [local_model.generate(m, SETTINGS, view=v) for m, v in requests]
    assert replies == solo
    assert replies[2] != replies[3]  # same question: user-2's adapter vs the base model


def _at_once(local_model: LocalModel, n: int, call) -> tuple[dict, list[int]]:
    """``call(i)`` on n threads released together, with batching on; their results and the batch sizes run."""
    local_model.enable_batching(window_ms=300, max_batch=8)
    try:
        got: dict[int, object] = {}
        start = threading.Barrier(n)

        def user(i: int) -> None:
            start.wait()
            got[i] = call(i)

        threads = [threading.Thread(target=user, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert local_model.batcher.wait_idle(timeout=300)  # each caller returns when its own row ends
        return got, local_model.batcher.batch_sizes
    finally:
        local_model.enable_batching(0)


def test_concurrent_generate_calls_are_batched_and_each_thread_gets_its_own_reply(
        local_model: LocalModel, views: list) -> None:
    expected = [local_model.generate(_messages(q), SETTINGS, view=v) for q, v in zip(QUESTIONS, views)]
    got, sizes = _at_once(local_model, len(views),
                          lambda i: local_model.generate(_messages(QUESTIONS[i]), SETTINGS, view=views[i]))
    assert [got[i] for i in range(len(views))] == expected
    assert sum(sizes) == len(views) and max(sizes) > 1  # served together, not one by one


def test_concurrent_streams_are_batched_and_each_thread_streams_its_own_reply(
        local_model: LocalModel, views: list) -> None:
    # A server streams every reply (SSE): concurrent streams of different users must share decode loops too.
    expected = [local_model.generate(_messages(q), SETTINGS, view=v) for q, v in zip(QUESTIONS, views)]
    got, sizes = _at_once(local_model, len(views),
                          lambda i: list(local_model.stream(_messages(QUESTIONS[i]), SETTINGS, view=views[i])))
    assert ["".join(got[i]) for i in range(len(views))] == expected
    assert all(len(got[i]) > 1 for i in range(len(views)))  # streamed in pieces, not handed over whole at the end
    assert sum(sizes) == len(views) and max(sizes) > 1


def test_a_short_reply_ends_its_stream_while_a_longer_row_of_its_batch_still_decodes(local_model: LocalModel) -> None:
    # A server's client whose reply is short must get the end of its stream (and send its next turn) without
    # waiting for the longest reply in its batch.
    settings = GenerationSettings(max_new_tokens=48)
    short_q, long_q = "Name a colour.", "Write a short poem about the sea."
    count = lambda text: len(local_model.tokenizer(text)["input_ids"])  # noqa: E731
    expected = {q: local_model.generate(_messages(q), settings) for q in (short_q, long_q)}
    assert count(expected[short_q]) + 10 < count(expected[long_q]), expected  # the premise of the test
    sizes_when_short_ended: list[int] = []
    got: dict[str, str] = {}

    def run(q: str) -> None:
        got[q] = "".join(local_model.stream(_messages(q), settings))
        if q == short_q:
            sizes_when_short_ended.extend(local_model.batcher.batch_sizes)

    got_batcher = _at_once(local_model, 2, lambda i: run([short_q, long_q][i]))[1]
    assert got == expected
    assert got_batcher == [2]  # one batch of both...
    assert sizes_when_short_ended == []  # ...which was still running when the short reply's stream ended


def test_a_request_that_arrives_mid_batch_joins_it_and_gets_its_solo_reply(
        local_model: LocalModel, views: list) -> None:
    # Continuous batching: a server's next request should not wait for the whole running batch to end.
    expected = [local_model.generate(_messages(q), SETTINGS, view=v) for q, v in zip(QUESTIONS, views)]
    local_model.enable_batching(window_ms=5, max_batch=8)
    try:
        first = local_model.stream(_messages(QUESTIONS[0]), SETTINGS, view=views[0])
        got0 = [next(first)]  # the first batch is decoding
        later = [local_model.stream(_messages(q), SETTINGS, view=v) for q, v in zip(QUESTIONS[1:], views[1:])]
        got0 += list(first)
        rest = ["".join(s) for s in later]
        batcher = local_model.batcher
        assert batcher.wait_idle(timeout=300)
        joined, sizes = batcher.joined, batcher.batch_sizes
    finally:
        local_model.enable_batching(0)
    assert ["".join(got0), *rest] == expected
    assert joined >= 1 and sizes[0] >= 2  # they joined the running loop instead of waiting for it to end


def test_bad_batch_requests_raise_a_clear_error(local_model: LocalModel) -> None:
    with pytest.raises(InvalidRequest, match="non-empty list"):
        local_model.generate_batch([], SETTINGS)
    with pytest.raises(InvalidRequest, match=r"requests\[0\] must be a \(messages, view\) pair"):
        local_model.generate_batch([_messages("hi")], SETTINGS)  # type: ignore[list-item]
