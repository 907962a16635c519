"""Device and dtype, chosen at run time: CUDA → bfloat16, otherwise CPU → float32.

fp32 is the CPU default: bf16 prompt processing measured 5× slower on an AVX2 CPU, and bf16 replies differ from
fp32's. On a CPU with bf16 kernels (AVX512-BF16 / AMX) bf16 is faster — prefill about 2.5×, and decoding from weights
packed once (:mod:`editing.packed`) — so ``dtype="bfloat16"`` is worth choosing there for serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DTYPE_NAMES", "DevicePlan", "choose_device", "device_problem"]


@dataclass(frozen=True)
class DevicePlan:
    device: torch.device
    dtype: torch.dtype

    def describe(self) -> str:
        """``"cpu (float32)"``; bf16 on a CPU says whether decoding uses weights packed for oneDNN."""
        from editing.packed import packing_reason

        dtype = str(self.dtype).removeprefix("torch.")
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            reason = packing_reason(self.device, self.dtype)
            dtype += ", packed linears" if reason is None else f", not packed: {reason}"
        return f"{self.device.type} ({dtype})"


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
DTYPE_NAMES = (*sorted(_DTYPES), "auto")  # what a dtype setting may say


def device_problem(device: str | None = None, dtype: str | None = None) -> str | None:
    """What is wrong with a device / dtype setting, in words a user can act on (``None``: nothing)."""
    if dtype not in (None, "") and dtype not in DTYPE_NAMES:
        return f"unknown dtype {dtype!r}: use one of {', '.join(DTYPE_NAMES)}"
    if device not in (None, "", "auto"):
        try:
            torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            return f"unknown device {device!r}: use cpu, cuda, cuda:1, mps, another torch device name, or auto"
    return None


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
            raise ValueError(device_problem(dtype=dtype))
        dt = _DTYPES[dtype]
    return DevicePlan(device=dev, dtype=dt)
