"""Key second moments: right values, computed once, cached on disk and reused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editing.errors import InvalidRequest
from editing.hooks import capture
from editing.stats import SecondMoments

MODULES = ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"]


def test_generated_corpus_statistics_are_computed_once_then_loaded(tiny_llama, smol_tokenizer, tmp_path) -> None:
    stats = SecondMoments(tiny_llama, smol_tokenizer, model_id="tiny/llama", cache_dir=tmp_path, seq_len=16,
                          batch_size=4)
    first = stats.prefetch(MODULES, n_tokens=64)
    assert stats.computed == 2  # both layers measured in one pass
    c = first[MODULES[0]]
    assert c.shape == (128, 128) and torch.allclose(c, c.T)
    assert torch.linalg.eigvalsh(c.double()).min() > -1e-6  # a second moment is positive semi-definite
    files = sorted(p.name for p in (tmp_path / "tiny_llama").iterdir())
    assert len(files) == 4 and sum(f.endswith(".json") for f in files) == 2, files

    stats.second_moment(MODULES[0], 64)
    assert stats.computed == 2, "the second call must come from memory"
    fresh = SecondMoments(tiny_llama, smol_tokenizer, model_id="tiny/llama", cache_dir=tmp_path, seq_len=16,
                          batch_size=4)
    assert torch.equal(fresh.second_moment(MODULES[0], 64), c)
    assert fresh.computed == 0, "another object on the same cache dir must load, not recompute"
    fresh.second_moment(MODULES[0], 128)
    assert fresh.computed == 1, "a different token count is a different statistic"


def test_corpus_statistics_equal_the_mean_outer_product_of_the_keys(tiny_llama, smol_tokenizer,
                                                                    tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Sam lives in Paris and likes green tea. " * 20)
    stats = SecondMoments(tiny_llama, smol_tokenizer, model_id="tiny/llama", cache_dir=tmp_path / "c",
                          corpus=corpus, seq_len=32, batch_size=2)
    c = stats.second_moment(MODULES[0], n_tokens=64)
    ids = smol_tokenizer(corpus.read_text(), add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = ids[0, :64].reshape(2, 32).to(tiny_llama.device)  # the corpus is read in windows of seq_len tokens
    tiny_llama.eval()
    with torch.no_grad(), capture(tiny_llama, MODULES[0]) as seen:
        tiny_llama(input_ids=ids)
    keys = seen[0].flatten(0, 1).double().cpu()  # (64, 128)
    assert torch.allclose(c.double(), keys.T @ keys / keys.shape[0], atol=1e-6)
    assert stats.corpus_tag() != "generated" and stats.path_for(MODULES[0], 64).is_file()


def test_bad_statistics_settings_are_refused(tiny_llama, smol_tokenizer, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="is not a file"):
        SecondMoments(tiny_llama, smol_tokenizer, model_id="m", cache_dir=tmp_path, corpus=tmp_path / "none.txt")
    with pytest.raises(InvalidRequest, match="model_id"):
        SecondMoments(tiny_llama, smol_tokenizer, model_id=" ", cache_dir=tmp_path)
    stats = SecondMoments(tiny_llama, smol_tokenizer, model_id="m", cache_dir=tmp_path)
    with pytest.raises(InvalidRequest, match="no module 'model.layers.7.mlp.down_proj'"):
        stats.second_moment("model.layers.7.mlp.down_proj", 64)
