#!/usr/bin/env bash
# The device check: pllm's model-level code on a GPU, in one short run (the GPU machine is lent for minutes).
#
#   bench/gpu_check.sh [DIR]      (DIR: default .gpu; logs go to $OUT, default /tmp/pllm-gpu-check)
#
# DIR holds what travels with the repo: smol/ (the SmolLM2 config and tokenizer files: the packaged model itself
# is too big to travel) and optionally whl/ (wheels of the versions pllm is tested with, installed to /tmp/site).
# Prepare it on the dev machine with `make gpu-check-prep`. Steps, each with its own log and time limit:
#   build          a model of SmolLM2-135M's architecture with random weights (bench/tiny_model.py)
#   pytest         the editing tests' tiny models on the device (PLLM_TEST_DEVICE); real-model tests skip
#   adapter_speed  refresh, batched per-user decoding, switching (bench/adapter_speed.py) on the random model
#   adapter_speed_16  the same batching with 16 users in one batch
#   edit           a user's facts edited into their model, published, served; one edit per method (gpu_edit.py)
#   generate       the fast decode step with a 50-edit user vs the base model (bench/generate.py)
#   counterfact    only when named in STEPS, after `make gpu-real-prep`: the real SmolLM2, put back together from
#                  real-a and real-b (carried by two calls in a row, kept in /tmp/pllm-parts between them), edited
#                  on CF_N (default 50) CounterFact cases by ROME, MEMIT and FT-L, each in its own process
#                  (bench/edit_counterfact.py --parallel), once per dtype in CF_DTYPES (default float32; the runs
#                  go at once); CF_LIMIT (s) bounds them. On an H200 one edit of this 135M model took 2-4.5 s
#                  (launch-bound, about the CPU's time), so 200 cases × 3 methods × 2 dtypes did not fit in 440 s:
#                  keep CF_N × 4.5 s well inside CF_LIMIT
# PYTEST_ARGS replaces the pytest step's default target (tests/editing).
# DEVICE=cpu runs the same steps on the CPU (a dry run of this script); LIMIT (s) bounds each step; STEPS="build
# pytest" runs only those.
set -uo pipefail
DIR=$(cd "${1:-.gpu}" && pwd) || exit 1
OUT=${OUT:-/tmp/pllm-gpu-check}
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-200}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False
if ls "$DIR"/whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$DIR"/whl/*.whl || exit 1
fi
[[ -d /tmp/site ]] && export PYTHONPATH=/tmp/site  # installed by this call or an earlier one on the same machine
# A path carried by one call is gone at the next, so the model's parts are kept outside the repo: the call that
# carries real-a leaves it in /tmp/pllm-parts for the later call that carries real-b (the machine stays the same
# while it is warm).
PARTS=/tmp/pllm-parts
for part in real-a real-b; do
  [[ -d "$DIR/$part" ]] && mkdir -p $PARTS && rm -rf "${PARTS:?}/$part" && cp -rL "$DIR/$part" $PARTS/
done
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__,
'peft', peft.__version__, 'cuda', torch.cuda.is_available(), 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
} 2>&1 | tee "$OUT/env.txt"

step() {
  local name=$1; shift
  [[ " ${STEPS:-build pytest adapter_speed adapter_speed_16 edit generate} " == *" $name "* ]] || return 0
  local t0=$SECONDS
  timeout "$LIMIT" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - t0)) s"
  tail -n "${TAIL:-12}" "$OUT/$name.log"
}

MODEL=/tmp/pllm-random-smol
step build "$PY" bench/tiny_model.py --like "$DIR/smol" --out "$MODEL" --json
TAIL=25 step pytest env PLLM_TEST_DEVICE="$DEVICE" PLLM_TEST_TOKENIZER="$DIR/smol" \
  "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rfE ${PYTEST_ARGS:-tests/editing}
step adapter_speed "$PY" bench/adapter_speed.py --model "$MODEL" --device "$DEVICE" --repeats 3 ${ADAPTER_ARGS:-} --json
step adapter_speed_16 "$PY" bench/adapter_speed.py --model "$MODEL" --device "$DEVICE" --users 16 --refresh-turns 0 \
  --repeats 3 ${ADAPTER_ARGS:-} --json
step edit "$PY" bench/gpu_edit.py --model "$MODEL" --device "$DEVICE" --no-check --json
step generate "$PY" bench/generate.py --model "$MODEL" --device "$DEVICE" ${GENERATE_ARGS:-} --json

real_model() {  # the packaged GGUF, from its two compressed parts, checked against its sha256
  local dir=/tmp/pllm-real name
  name=$(awk '{print $2}' $PARTS/real-a/gguf.sha256)
  mkdir -p $dir && cat $PARTS/real-a/gguf.xz.* $PARTS/real-b/gguf.xz.* |
    "$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" >"$dir/$name" &&
    (cd $dir && sha256sum -c $PARTS/real-a/gguf.sha256) && echo "$dir/$name"
}
if [[ " ${STEPS:-} " == *" counterfact "* ]]; then
  if GGUF=$(real_model 2>"$OUT/real_model.log" | tail -n 1) && [[ -f "$GGUF" ]]; then
    "$PY" -c "from editing import ensure_converted; from pathlib import Path; \
ensure_converted(Path('$GGUF'), Path('/tmp/pllm-real-models'))" >>"$OUT/real_model.log" 2>&1
    for dtype in ${CF_DTYPES:-float32}; do  # each dtype in its own run, all at once
      STEPS=counterfact_$dtype LIMIT=${CF_LIMIT:-480} TAIL=14 step counterfact_$dtype "$PY" bench/edit_counterfact.py \
        $PARTS/real-a/data --n "${CF_N:-50}" --model "$GGUF" --device "$DEVICE" --dtype "$dtype" \
        --cache-dir /tmp/pllm-real-models --parallel --json &
    done
    wait
  else
    echo "== counterfact: the real model could not be put back together"; cat "$OUT/real_model.log"
  fi
fi
