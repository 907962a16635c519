"""Device and dtype, chosen at run time: CUDA → bfloat16, otherwise CPU → float32.

fp32 is the right CPU dtype here: bf16 prompt processing measured 5× slower on an AVX2 CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DevicePlan", "choose_device"]


@dataclass(frozen=True)
class DevicePlan:
    device: torch.device
    dtype: torch.dtype

    def describe(self) -> str:
        return f"{self.device.type} ({str(self.dtype).removeprefix('torch.')})"


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def choose_device(device: str | None = None, dtype: str | None = None) -> DevicePlan:
    """Pick the device (``None``/"auto" = an accelerator when present) and a dtype that suits it."""
    if device in (None, "", "auto"):
        # Whatever accelerator this torch build sees (CUDA, ROCm, MPS, XPU, ...); else the CPU.
        accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        dev = accelerator or torch.device("cpu")
    else:
        dev = torch.device(device)
    if dtype in (None, "", "auto"):
        # bf16 on accelerators that support it; fp32 on CPU (faster here) and elsewhere.
        bf16_ok = dev.type != "cpu" and (dev.type != "cuda" or torch.cuda.is_bf16_supported())
        dt = torch.bfloat16 if bf16_ok else torch.float32
    else:
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'")
        dt = _DTYPES[dtype]
    return DevicePlan(device=dev, dtype=dt)
