"""A trained adapter as a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``) plus ``pllm.json``.

PEFT loads the folder itself (``PeftModel.from_pretrained(base, folder)``); ``pllm.json`` follows
:mod:`editing.adapters`' conventions (base-model id, pllm version, format; written last, so its presence marks
a complete folder) and keeps the training config in ``extra``. Loading on another base raises
:class:`~editing.errors.StaleAdapter`: a stale adapter is never loaded.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from editing.adapters import move_into_place, read_meta, write_meta
from editing.errors import InvalidRequest, StaleAdapter
from editing.oppu.config import AdapterTrainConfig
from editing.oppu.train import TrainedAdapter

__all__ = ["save_adapter", "load_adapter"]

_CONFIG, _WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _jsonable(peft_config: dict[str, Any]) -> dict[str, Any]:
    out = dict(peft_config, inference_mode=True)
    for key, value in out.items():
        if isinstance(value, (set, frozenset)):
            out[key] = sorted(value)  # PEFT keeps target_modules as a set: not JSON
    return out


def save_adapter(folder: Path, adapter: TrainedAdapter) -> None:
    """Write ``adapter`` to ``folder`` (replaced if it exists), complete before it gets its name."""
    from safetensors.torch import save_file

    if not isinstance(adapter, TrainedAdapter):
        raise InvalidRequest(f"save_adapter needs a TrainedAdapter, got {type(adapter).__name__}")
    folder = Path(folder)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        (tmp / _CONFIG).write_text(json.dumps(_jsonable(adapter.peft_config), indent=2, default=str))
        save_file({k: v.contiguous() for k, v in adapter.state.items()}, str(tmp / _WEIGHTS), metadata={"format": "pt"})
        write_meta(tmp, adapter.base_model_id, {"kind": f"oppu_{adapter.kind}", "train_config": adapter.config.to_dict(),
                                                "n_examples": adapter.n_examples, "n_replayed": adapter.n_replayed,
                                                "final_loss": adapter.losses[-1] if adapter.losses else None,
                                                **adapter.extra})
        move_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_adapter(folder: Path, *, base_model_id: str) -> TrainedAdapter:
    """Read a :func:`save_adapter` folder; :class:`StaleAdapter` when it was made for another base model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_meta(folder)
    if meta["base_model_id"] != base_model_id:
        raise StaleAdapter(f"adapter {folder} was trained on base model {meta['base_model_id']!r}, but the loaded "
                           f"base is {base_model_id!r}: retrain it on the current base (train_adapter without init)")
    extra = dict(meta.get("extra") or {})
    if "train_config" not in extra:
        raise InvalidRequest(f"{folder} holds no trained-adapter config (written by editing.adapters.save_lora? "
                             "load it with load_lora)")
    try:
        state = load_file(str(folder / _WEIGHTS))
        peft_config = json.loads((folder / _CONFIG).read_text())
    except (OSError, SafetensorError, json.JSONDecodeError) as err:
        raise InvalidRequest(f"{folder} is incomplete or corrupt ({err}); train the adapter again") from None
    config = AdapterTrainConfig.from_dict(extra.pop("train_config"))
    final_loss = extra.pop("final_loss", None)
    losses = (final_loss,) if final_loss is not None else ()
    n_examples, n_replayed = int(extra.pop("n_examples", 0)), int(extra.pop("n_replayed", 0))
    extra.pop("kind", None)
    return TrainedAdapter(config, peft_config, state, meta["base_model_id"], losses, n_examples=n_examples,
                          n_replayed=n_replayed, extra=extra)
