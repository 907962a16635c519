"""The editing benches measure key statistics before the clock runs, for exactly the modules the methods use."""

from __future__ import annotations

from editing.ft_l import FTLHyperParams
from editing.memit import MEMITHyperParams
from editing.rome import ROMEHyperParams
from editing.stats import SecondMoments
from tests.editing.conftest import TINY_VALUE


def test_statistics_are_measured_once_for_rome_and_memit_layers_and_none_for_ft_l(
        tiny_llama, smol_tokenizer, tmp_path) -> None:
    from bench._editing import prefetch_statistics

    stats = SecondMoments(tiny_llama, smol_tokenizer, model_id="tiny", cache_dir=tmp_path, seq_len=32, batch_size=8)
    methods = [ROMEHyperParams(layer=1, mom2_n_tokens=256, **TINY_VALUE),
               MEMITHyperParams(layers=(1, 2), mom2_n_tokens=256, **TINY_VALUE), FTLHyperParams(layers=(0,))]
    prefetch_statistics(stats, methods)
    assert stats.computed == 2  # layers 1 and 2, measured in one pass; layer 1 is shared; FT-L's layer 0 is not
    assert sorted(p.name.split("--")[0] for p in tmp_path.rglob("*.pt")) == [
        "model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"]
    prefetch_statistics(stats, methods)  # a second run (the timed edits) measures nothing
    assert stats.computed == 2
