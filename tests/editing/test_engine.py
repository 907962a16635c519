"""The engine process (``LocalModel.enable_engine_process``): the real model decoding in a child process of its own.

What a user would notice: the replies are the ones the model gives in-process (fp32 greedy: token for token), with
a user's deltas too; concurrent requests are batched there; a refused request is refused with the engine's own
message and the engine goes on serving; an engine that dies, or cannot start, says so; closing stops it."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from editing import GenerationSettings, InvalidRequest, LocalModel, RuntimeConfig
from editing.adapters import UserView
from editing.engine import EngineClient, EngineUnavailable, parse_cpus
from editing.requests import LowRankDelta

SHORT = GenerationSettings(max_new_tokens=16)
ASKS = [[{"role": "user", "content": f"Tell me about {topic}."}] for topic in ("cats", "Paris", "rain")]


@pytest.fixture(scope="module")
def model(model_cache_dir: Path) -> Iterator[LocalModel]:
    """A model of its own (the session's shared one keeps its in-process batcher)."""
    local = LocalModel.load(RuntimeConfig(cache_dir=model_cache_dir))
    yield local
    local.close()


@pytest.fixture(scope="module")
def engine(model: LocalModel) -> Iterator[EngineClient]:
    engine = model.enable_engine_process(window_ms=25, max_batch=4)
    yield engine
    model.close()


def _view(model: LocalModel, seed: int) -> UserView:
    g = torch.Generator().manual_seed(seed)
    deltas = tuple(LowRankDelta(f"model.layers.{layer}.mlp.down_proj", torch.randn(4, 1536, generator=g) * 0.3,
                                torch.randn(576, 4, generator=g) * 0.3) for layer in (2, 5))
    return UserView(f"user{seed}", 1, deltas, model.model_id)


def _in_process(model: LocalModel, messages, view: UserView | None = None, settings=SHORT) -> str:
    """The reply decoded in this process, one request alone (no batcher)."""
    ids = model.encode_chat(messages)
    return "".join(model._decode(ids, settings, view.deltas if view else (), {}))


def test_concurrent_replies_equal_the_in_process_ones_and_are_batched_in_the_engine(model, engine) -> None:
    want = [_in_process(model, m) for m in ASKS]
    got: list[str | None] = [None] * len(ASKS)

    def ask(i: int) -> None:
        got[i] = "".join(model.stream(ASKS[i], SHORT))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(ASKS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == want and all(want)
    assert engine.wait_idle(30)
    assert sum(engine.batch_sizes) >= len(ASKS) and max(engine.batch_sizes) >= 2  # decoded together, not one by one
    assert model.generate(ASKS[0], SHORT) == want[0]  # a whole-reply request too


def test_a_users_deltas_reach_the_engine_and_change_the_reply_as_in_process(model, engine) -> None:
    view = _view(model, 7)
    plain = _in_process(model, ASKS[1])
    personal = _in_process(model, ASKS[1], view)
    assert personal != plain  # the deltas matter for this prompt
    assert model.generate(ASKS[1], SHORT, view=view) == personal
    assert model.generate(ASKS[1], SHORT, view=view) == personal  # again: sent once, then named by digest
    assert model.generate(ASKS[1], SHORT) == plain  # and no other request sees them
    other = _view(model, 8)
    assert model.generate(ASKS[1], SHORT, view=other) == _in_process(model, ASKS[1], other)


def test_a_refused_request_carries_the_engines_message_and_the_engine_goes_on(model, engine) -> None:
    bad = UserView("ivy", 1, (LowRankDelta("model.layers.99.mlp.down_proj", torch.zeros(1, 1536),
                                           torch.zeros(576, 1)),), model.model_id)
    with pytest.raises(Exception) as raised:
        model.generate(ASKS[0], SHORT, view=bad)
    assert "layers.99" in str(raised.value)
    assert not isinstance(raised.value, EngineUnavailable) and engine.alive
    assert model.generate(ASKS[2], SHORT) == _in_process(model, ASKS[2])


TWO_CPUS = sorted(os.sched_getaffinity(0))[:2]


@pytest.mark.slow
@pytest.mark.skipif(len(TWO_CPUS) < 2, reason="decoding on one CPU and prefilling on another needs two CPUs")
def test_split_engine_prefills_joining_requests_elsewhere_and_their_replies_are_unchanged(model_cache_dir) -> None:
    """Two CPUs: the engine decodes on the first and prefills the requests that join a running batch in a prefill
    process on the second; each reply still equals the model's own, deltas included."""
    local = LocalModel.load(RuntimeConfig(cache_dir=model_cache_dir))
    view = _view(local, 9)
    asks = [(m, None) for m in ASKS] + [(ASKS[0], view), (ASKS[2], view)]
    same = GenerationSettings(max_new_tokens=32)  # one settings group: requests may join a running batch
    want = [_in_process(local, m, v, same) for m, v in asks]
    engine = local.enable_engine_process(window_ms=25, max_batch=8, cpus=TWO_CPUS)

    def join_a_running_batch() -> list[str | None]:
        """One request starts a batch; half a second later the others arrive (and join it); their replies."""
        got: list[str | None] = [None] * len(asks)

        def ask(i: int) -> None:
            got[i] = "".join(local.stream(asks[i][0], same, view=asks[i][1]))

        first = threading.Thread(target=lambda: local.generate(ASKS[1], same))
        first.start()
        threading.Event().wait(0.5)
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
        for t in threads:
            t.start()
        for t in [*threads, first]:
            t.join(120)
        return got

    try:
        assert engine.split
        assert join_a_running_batch() == want
        assert engine.wait_idle(30) and engine.joined >= 1  # some joined the running batch with a ready prefill
        assert engine.kv_transfers.get("shared", 0) >= 1  # their KV came back through shared memory

        # the prefill process dies: joining requests are prefilled by the decode loop again, replies unchanged
        os.kill(engine.prefill_pid, signal.SIGKILL)
        threading.Event().wait(1.0)
        assert join_a_running_batch() == want and engine.alive
    finally:
        local.close()


def test_a_prefill_made_in_the_prefill_process_comes_back_the_same_through_shared_memory_or_the_pipe(
        model: LocalModel, model_cache_dir: Path, caplog) -> None:
    """The prefill process's KV and logits equal this process's own prefill of the prompt (to float noise: it runs
    on another number of threads), whether they came back in a shared-memory slot (the prompt fits, a slot is
    free) or pickled through the pipe (too long, or no slot free); the slots' file has no name left once both
    processes mapped it. Closing it is not reported as the process dying (a server's shutdown logged that
    warning), and a prefill asked for afterwards is left to the decode loop."""
    from editing.batch_decode import BatchDecoder
    from editing.engine import _KvSlots, _PrefillProcess

    full = _KvSlots.for_model(model.model, 2)
    assert full is not None
    slots = _KvSlots((2, *full.shape[1:4], 48, full.shape[5]), full.dtype)  # prompts up to 48 tokens fit
    full.unlink()
    short, long = model.encode_chat(ASKS[0]), model.encode_chat([{"role": "user", "content": "Tell me a story "
                                                                  "about a lighthouse keeper and a storm " * 3}])
    assert short.shape[1] <= 48 < long.shape[1]
    view = _view(model, 3)
    decoder = BatchDecoder(model.model, model.tokenizer)
    ahead = _PrefillProcess(RuntimeConfig(cache_dir=model_cache_dir), sorted(os.sched_getaffinity(0))[-1:],
                            slots=slots)
    try:
        assert not os.path.exists(slots.path)

        def same(got: tuple, ids: torch.Tensor, deltas=()) -> None:
            logits, cache = decoder.prefill_one(ids, deltas)
            torch.testing.assert_close(got[0], logits, rtol=1e-3, atol=1e-3)
            assert len(got[1].layers) == len(cache.layers)
            for mine, theirs in zip(got[1].layers, cache.layers):
                torch.testing.assert_close(mine.keys, theirs.keys, rtol=1e-3, atol=1e-3)
                torch.testing.assert_close(mine.values, theirs.values, rtol=1e-3, atol=1e-3)

        same(ahead(short, ()).result(120), short)
        assert ahead.transfers == {"shared": 1, "pickled": 0}
        same(ahead(long, ()).result(120), long)
        same(ahead(short, view.deltas).result(120), short, view.deltas)
        assert ahead.transfers == {"shared": 2, "pickled": 1}
        # no slot free (both held by prefills in flight): through the pipe
        with ahead._lock:
            held, ahead._free[:] = list(ahead._free), []
        same(ahead(short, ()).result(120), short)
        assert ahead.transfers == {"shared": 2, "pickled": 2}
        with ahead._lock:
            ahead._free.extend(held)
        # three in flight at once, whichever way each comes back; every slot is free again afterwards
        futures = [ahead(short, view.deltas if i == 1 else ()) for i in range(3)]
        for i, future in enumerate(futures):
            same(future.result(120), short, view.deltas if i == 1 else ())
        assert sum(ahead.transfers.values()) == 7 and sorted(ahead._free) == [0, 1]
        with caplog.at_level("WARNING", logger="editing.engine"):
            ahead.close()
        assert "prefill process exited" not in caplog.text
        assert ahead(short, ()) is None
    finally:
        ahead.close()


def test_without_shared_memory_the_kv_comes_back_through_the_pipe(model: LocalModel, monkeypatch, caplog) -> None:
    """No slots when the file cannot be made (a warning says so, and no file is left) or the model's config does
    not give its attention shape: the prefill process then pickles every KV (tested above)."""
    from editing import engine as engine_module

    made: list[str] = []
    real_mkstemp = engine_module.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        made.append(path)
        return fd, path

    def refuse(*args, **kwargs):
        raise RuntimeError("unable to mmap the shared memory file")

    monkeypatch.setattr(engine_module.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(engine_module.torch, "from_file", refuse)
    with caplog.at_level("WARNING", logger="editing.engine"):
        assert engine_module._KvSlots.for_model(model.model, 2) is None
    assert "pickled through the pipe" in caplog.text and made and not os.path.exists(made[0])
    assert engine_module._KvSlots.for_model(object(), 2) is None


def test_an_engine_that_cannot_load_its_model_says_why(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="could not start: ModelNotFound: no GGUF file"):
        EngineClient(RuntimeConfig(model=str(tmp_path / "missing.gguf"), cache_dir=tmp_path))


def test_an_engine_that_dies_fails_its_requests_with_a_message_and_closing_is_clean(model_cache_dir: Path) -> None:
    local = LocalModel.load(RuntimeConfig(cache_dir=model_cache_dir))
    engine = local.enable_engine_process(window_ms=25, max_batch=2)
    try:
        assert local.generate(ASKS[0], GenerationSettings(max_new_tokens=2))
        os.kill(engine.pid, signal.SIGKILL)
        engine._proc.join(30)
        with pytest.raises(EngineUnavailable, match="exited.*restart"):
            local.generate(ASKS[0], SHORT)
    finally:
        local.close()
    assert not engine.alive and local.batcher is None
    assert _in_process(local, ASKS[0])  # the serving process's own model still decodes


def test_enable_batching_stops_the_engine(model_cache_dir: Path) -> None:
    local = LocalModel.load(RuntimeConfig(cache_dir=model_cache_dir))
    engine = local.enable_engine_process(window_ms=25, max_batch=2)
    local.enable_batching(0)
    assert not engine._proc.is_alive() and local.batcher is None


def test_a_model_not_made_by_load_cannot_start_an_engine(model: LocalModel) -> None:
    bare = LocalModel(model.model, model.tokenizer, model_id=model.model_id, plan=model.plan, source=model.source)
    with pytest.raises(InvalidRequest, match="LocalModel.load"):
        bare.enable_engine_process()


def test_cpu_lists_parse_and_bad_ones_are_refused() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    assert parse_cpus(str(allowed[0])) == (allowed[0],)
    assert parse_cpus(f"{allowed[0]}-{allowed[-1]}") == tuple(range(allowed[0], allowed[-1] + 1))
    assert parse_cpus(None) is None and parse_cpus("") is None
    for bad, says in (("x", "bad CPU list"), ("3-1", "bad CPU list"), ("4096", "not available")):
        with pytest.raises(InvalidRequest, match=says):
            parse_cpus(bad)
