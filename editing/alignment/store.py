"""Pole adapters on disk, once per base model: PEFT LoRA folders with the base-model id recorded.

::

    root/<sha256(base_model_id)[:16]>/
        base.json                 {"base_model_id": ...}
        answers.verbosity.json    the base model's instructed answers the pairs were built from (reused)
        verbosity.concise/        adapter_config.json, adapter_model.safetensors, pllm.json (written last)
        verbosity.detailed/
        ...

A folder is written under a temporary name and renamed into place (a retrain replaces it whole); only a folder
holding ``pllm.json`` counts. ``pllm.json`` (:func:`editing.adapters.write_meta`) carries the base-model id, the
pllm version, the training config and the DPO losses; a pole is never loaded for another base model. The stack
keeps its poles beside the converted model (``<model cache>/poles``), so every home on that cache shares them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editing.adapters import move_into_place, read_meta, write_meta
from editing.alignment.config import PoleTrainConfig
from editing.alignment.poles import Pole, all_poles
from editing.alignment.train import PoleAdapter
from editing.errors import InvalidRequest, StaleAdapter

if TYPE_CHECKING:  # pragma: no cover
    from editing.alignment.pairs import DimensionAnswers

__all__ = ["PoleStore"]

log = logging.getLogger(__name__)

_CONFIG, _WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _generation_key(config: PoleTrainConfig) -> dict[str, Any]:
    return {"max_new_tokens": config.max_new_tokens, "repetition_penalty": config.repetition_penalty}


class PoleStore:
    """Save, find and load the pole adapters of each base model under ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def base_dir(self, base_model_id: str) -> Path:
        if not isinstance(base_model_id, str) or not base_model_id:
            raise InvalidRequest(f"base_model_id must be a non-empty string, got {base_model_id!r}")
        return self.root / hashlib.sha256(base_model_id.encode()).hexdigest()[:16]

    def folder(self, base_model_id: str, pole: Pole) -> Path:
        return self.base_dir(base_model_id) / pole.key

    def save(self, adapter: PoleAdapter) -> Path:
        """Write ``adapter`` (replacing that pole's previous folder for the same base model); returns the folder."""
        from safetensors.torch import save_file

        base = self.base_dir(adapter.base_model_id)
        base.mkdir(parents=True, exist_ok=True)
        (base / "base.json").write_text(json.dumps({"base_model_id": adapter.base_model_id}))
        folder = self.folder(adapter.base_model_id, adapter.pole)
        tmp = base / f".tmp-{adapter.pole.key}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            config = {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in adapter.peft_config.items()}
            (tmp / _CONFIG).write_text(json.dumps({**config, "inference_mode": True}, indent=2, default=str))
            save_file({k: v.contiguous() for k, v in adapter.state.items()}, str(tmp / _WEIGHTS), metadata={"format": "pt"})
            write_meta(tmp, adapter.base_model_id, {
                "kind": "dpo_pole", "dimension": adapter.pole.dimension, "pole": adapter.pole.name,
                "train_config": adapter.config.to_dict(), "n_pairs": adapter.n_pairs, "losses": list(adapter.losses),
                "reward_margins": list(adapter.reward_margins), "seconds": round(adapter.seconds, 2), **adapter.extra})
            move_into_place(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def meta(self, base_model_id: str, pole: Pole) -> dict[str, Any] | None:
        """``pllm.json`` of the pole for this base model, or None when it is not trained (or incomplete)."""
        folder = self.folder(base_model_id, pole)
        if not (folder / "pllm.json").is_file():
            return None
        meta = read_meta(folder)
        if meta["base_model_id"] != base_model_id:
            raise StaleAdapter(f"pole {pole.key} in {folder} was trained on {meta['base_model_id']!r}, not "
                               f"{base_model_id!r}: run `pllm align train` again")
        return meta

    def available(self, base_model_id: str) -> list[Pole]:
        """The poles trained for this base model."""
        out = []
        for pole in all_poles():
            try:
                if self.meta(base_model_id, pole) is not None:
                    out.append(pole)
            except InvalidRequest as err:
                log.warning("pole %s is not usable: %s", pole.key, err)
        return out

    def load(self, base_model_id: str, pole: Pole) -> PoleAdapter:
        """Read a pole back; :class:`InvalidRequest` when it is missing or corrupt, :class:`StaleAdapter` when it
        was trained for another base model."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        meta = self.meta(base_model_id, pole)
        folder = self.folder(base_model_id, pole)
        if meta is None:
            raise InvalidRequest(f"no {pole.key} pole adapter for base model {base_model_id!r} under {self.root}; "
                                 "train the poles with `pllm align train`")
        try:
            state = load_file(str(folder / _WEIGHTS))
            peft_config = json.loads((folder / _CONFIG).read_text())
        except (OSError, SafetensorError, json.JSONDecodeError) as err:
            raise InvalidRequest(f"pole {pole.key} in {folder} is incomplete or corrupt ({err}); run "
                                 "`pllm align train` again") from None
        extra = dict(meta.get("extra") or {})
        config = PoleTrainConfig.from_dict(extra.get("train_config") or {})
        return PoleAdapter(pole, peft_config, state, base_model_id, config, losses=tuple(extra.get("losses") or ()),
                           n_pairs=int(extra.get("n_pairs") or 0))

    def save_answers(self, base_model_id: str, answers: "DimensionAnswers", config: PoleTrainConfig) -> None:
        """Keep the base model's instructed answers of one dimension (generating them is most of a run's time on a
        CPU), keyed by the generation settings, so a retrain (``--force``, more steps) reuses them."""
        base = self.base_dir(base_model_id)
        base.mkdir(parents=True, exist_ok=True)
        data = {"base_model_id": base_model_id, "generation": _generation_key(config), **dataclasses.asdict(answers)}
        tmp = base / f".tmp-answers-{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, base / f"answers.{answers.dimension}.json")

    def load_answers(self, base_model_id: str, dimension: str, prompts: tuple[str, ...],
                     config: PoleTrainConfig) -> "DimensionAnswers | None":
        """The kept answers of ``dimension`` for exactly these prompts and generation settings, else None."""
        from editing.alignment.pairs import DimensionAnswers

        path = self.base_dir(base_model_id) / f"answers.{dimension}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if (data.get("base_model_id") != base_model_id or data.get("generation") != _generation_key(config)
                or tuple(data.get("prompts") or ()) != tuple(prompts)):
            return None
        fields = {f.name for f in dataclasses.fields(DimensionAnswers)}
        return DimensionAnswers(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields})

    def fingerprint(self, base_model_id: str, poles: list[Pole]) -> str:
        """Identifies the trained versions of ``poles`` (their ``created_at``): a cached merge of them is current
        while this is unchanged."""
        stamps = []
        for pole in poles:
            meta = self.meta(base_model_id, pole)
            stamps.append(f"{pole.key}@{meta['created_at'] if meta else '-'}")
        return hashlib.sha256("|".join(stamps).encode()).hexdigest()[:16]
