"""The model runtime: packaged model, cache conversion and rebuild, chat template, device choice, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from editing import (
    LocalModel,
    ModelNotFound,
    RuntimeConfig,
    cache_state,
    cached_folder_for,
    choose_device,
    ensure_converted,
    locate_packaged_gguf,
)
from editing.errors import InvalidRequest


def test_default_model_is_the_packaged_smollm2(local_model: LocalModel) -> None:
    assert local_model.model.config.num_hidden_layers == 30
    assert local_model.model.config.hidden_size == 576
    assert local_model.model_id.startswith("SmolLM2-135M-Instruct")
    assert local_model.plan.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_chat_template_is_chatml_with_our_system_prompt(local_model: LocalModel) -> None:
    ids = local_model.encode_chat([
        {"role": "system", "content": "You are Pat's assistant."},
        {"role": "user", "content": "Hello there"},
    ])
    text = local_model.tokenizer.decode(ids[0])
    assert text.startswith("<|im_start|>system\nYou are Pat's assistant.<|im_end|>")
    assert "<|im_start|>user\nHello there<|im_end|>" in text
    assert text.rstrip().endswith("<|im_start|>assistant")
    assert "SmolLM" not in text  # our system prompt replaces the template's default one


def test_generate_answers_a_simple_question(local_model: LocalModel) -> None:
    reply = local_model.generate([{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply


def test_replies_are_decoded_on_the_compute_thread_whatever_thread_asks(local_model: LocalModel,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every decode runs on editing.compute's one thread (a second thread's OpenMP pool halves decode speed)."""
    import threading

    import editing.runtime as runtime
    from editing.compute import COMPUTE

    where: list[str] = []
    real = runtime.decode_stream

    def spy(*args, **kwargs):
        where.append(threading.current_thread().name)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(runtime, "decode_stream", spy)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    replies: list[str] = []
    asker = threading.Thread(target=lambda: replies.append("".join(local_model.stream(question))))
    asker.start()
    asker.join(120)
    replies.append(local_model.generate(question))
    assert where == [COMPUTE.name, COMPUTE.name]
    assert replies[0] == replies[1] and "Paris" in replies[0]


def test_bad_chat_messages_are_rejected_clearly(local_model: LocalModel) -> None:
    with pytest.raises(InvalidRequest, match="messages is empty"):
        local_model.encode_chat([])
    with pytest.raises(InvalidRequest, match="role"):
        local_model.encode_chat([{"role": "robot", "content": "hi"}])


def test_missing_model_path_says_what_was_looked_for(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFound, match=str(missing)):
        LocalModel.load(RuntimeConfig(model=str(missing), cache_dir=tmp_path))
    with pytest.raises(ModelNotFound, match="never downloads"):
        LocalModel.load(RuntimeConfig(model="someone/not-cached-model", cache_dir=tmp_path))
    with pytest.raises(ModelNotFound, match="no GGUF file"):
        LocalModel.load(RuntimeConfig(model=str(tmp_path / "x.gguf"), cache_dir=tmp_path))


def test_a_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="config.json"):
        LocalModel.load(RuntimeConfig(model=str(tmp_path / "empty"), cache_dir=tmp_path))


def test_device_choice_is_made_at_run_time() -> None:
    plan = choose_device()
    if torch.cuda.is_available():
        assert plan.device.type == "cuda"
    else:
        assert plan.device.type in ("cpu", "mps") and plan.dtype in (torch.float32, torch.bfloat16)
    cpu = choose_device("cpu")
    assert (cpu.device.type, cpu.dtype) == ("cpu", torch.float32)
    assert choose_device("cpu", "bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        choose_device("cpu", "int3")


@pytest.mark.slow
def test_corrupt_cache_is_detected_and_rebuilt(model_cache_dir: Path, local_model: LocalModel, tmp_path: Path) -> None:
    gguf = locate_packaged_gguf()
    good = cached_folder_for(gguf, model_cache_dir)
    cache = tmp_path / "models"
    folder = cached_folder_for(gguf, cache)
    shutil.copytree(good, folder)
    assert cache_state(folder).valid
    weights = folder / "model.safetensors"
    with weights.open("r+b") as fh:  # a crash mid-write: the file is cut short
        fh.truncate(weights.stat().st_size // 2)
    state = cache_state(folder)
    assert not state.valid and "model.safetensors" in state.reason
    rebuilt = ensure_converted(gguf, cache)
    assert cache_state(rebuilt).valid
    reloaded = LocalModel.load(RuntimeConfig(cache_dir=cache))
    ids = local_model.encode_chat([{"role": "user", "content": "Hi"}])
    with torch.no_grad():
        a = local_model.model(input_ids=ids).logits
        b = reloaded.model(input_ids=ids.to(reloaded.plan.device)).logits
    torch.testing.assert_close(a, b)


def test_interrupted_conversion_leaves_no_valid_looking_cache(model_cache_dir: Path, local_model: LocalModel,
                                                             tmp_path: Path) -> None:
    # local_model: the converted cache exists (and the test skips where the packaged model is absent)
    gguf = locate_packaged_gguf()
    folder = cached_folder_for(gguf, tmp_path)
    shutil.copytree(cached_folder_for(gguf, model_cache_dir), folder)
    (folder / "pllm-manifest.json").unlink()  # the manifest is written last: without it, the folder is incomplete
    assert not cache_state(folder).valid
    assert "manifest" in cache_state(folder).reason


def test_the_model_is_loaded_without_hub_kernels(local_model: LocalModel) -> None:
    # transformers kernelizes a loaded model with kernels from the Hub by default; on CUDA its train() then looks
    # them up again and fails offline (seen on the GPU machine: every adapter refresh and pole training crashed).
    assert local_model.model.use_kernels is False
    assert local_model.model.kernels_mode is None
