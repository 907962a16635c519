"""Train one pole adapter: DPO (TRL's ``DPOTrainer``) with a LoRA (PEFT) on the pole's preference pairs.

The trainer gets a fresh copy of the base model loaded from its transformers folder (TRL refuses a model loaded
from GGUF; pllm's converted folder is what :class:`~editing.runtime.LocalModel` loads from anyway), so the
served model is never touched. With PEFT, TRL's reference policy is the same model with the adapter disabled.
The device is chosen as everywhere in pllm (:func:`editing.device.choose_device`): CUDA in bf16 when present.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from editing.alignment.config import PoleTrainConfig
from editing.alignment.pairs import PreferencePair
from editing.alignment.poles import Pole
from editing.errors import InvalidRequest

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

__all__ = ["PoleAdapter", "train_pole"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]  # (step done, total steps, that step's loss)


@dataclass(frozen=True)
class PoleAdapter:
    """A trained pole: PEFT's LoRA state dict (CPU) and config, and how it was made."""

    pole: Pole
    peft_config: dict[str, Any]
    state: dict[str, torch.Tensor]
    base_model_id: str
    config: PoleTrainConfig
    losses: tuple[float, ...] = ()
    reward_margins: tuple[float, ...] = ()
    n_pairs: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _progress_callback(progress: Progress | None, total: int) -> Any:
    from transformers import TrainerCallback

    class _Report(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if progress is not None and logs and "loss" in logs:
                progress(int(state.global_step), total, float(logs["loss"]))

    return _Report()


def train_pole(model_folder: str | Path, tokenizer: "PreTrainedTokenizerBase", pole: Pole,
               pairs: Sequence[PreferencePair], *, base_model_id: str, config: PoleTrainConfig | None = None,
               progress: Progress | None = None, device: str | None = None) -> PoleAdapter:
    """DPO-train ``pole``'s LoRA on ``pairs`` from the base model in ``model_folder``; nothing else is changed."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from editing.device import choose_device
    from editing.model_cache import OFFLINE_LOAD

    config = config or PoleTrainConfig()
    if len(pairs) < 2:
        raise InvalidRequest(f"{pole.key}: need at least 2 preference pairs to train on, got {len(pairs)} (the base "
                             "model did not follow the pole's instruction on enough prompts)")
    folder = Path(model_folder)
    if not (folder / "config.json").is_file():
        raise InvalidRequest(f"{folder} is not a transformers model folder (no config.json); pole adapters train "
                             "from the converted folder LocalModel loads (LocalModel.source)")
    plan = choose_device(device)
    on_cpu = plan.device.type == "cpu"
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=plan.dtype, **OFFLINE_LOAD)
    lora = LoraConfig(r=config.r, lora_alpha=config.alpha, target_modules=list(config.target_modules), lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pllm-dpo-") as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=config.batch_size, max_steps=config.steps,
                         learning_rate=config.lr, beta=config.beta, max_length=config.max_length,
                         lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, report_to=[],
                         save_strategy="no", use_cpu=on_cpu, bf16=plan.dtype == torch.bfloat16,
                         activation_checkpointing=False, seed=config.seed, data_seed=config.seed,
                         dataloader_num_workers=0, disable_tqdm=True)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list([p.as_row() for p in pairs]),
                             processing_class=tokenizer, peft_config=lora,
                             callbacks=[_progress_callback(progress, config.steps)])
        trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    peft_model = trainer.model
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    peft_config = peft_model.peft_config["default"].to_dict()
    seconds = time.perf_counter() - t0
    log.info("trained pole %s on %d pairs: %d steps in %.1f s, loss %.3f → %.3f", pole.key, len(pairs), config.steps,
             seconds, history[0]["loss"] if history else float("nan"), history[-1]["loss"] if history else float("nan"))
    return PoleAdapter(pole, peft_config, state, base_model_id, config,
                       losses=tuple(float(h["loss"]) for h in history),
                       reward_margins=tuple(float(h.get("rewards/margins", float("nan"))) for h in history),
                       n_pairs=len(pairs), seconds=seconds)
