#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (no network needed): the harness's CUDA paths, and the per-case costs that
# docs/scaling.md turns into grid times. Every figure goes to OUT as it is measured.
#
#   bash benchmarks/gpu_check.sh OUT [TOKENIZER_FOLDER]     # TOKENIZER_FOLDER: where the embedded model is missing
#   (PQQP_SMALL_RECIPES / PQQP_LARGE_RECIPES: ';'-separated recipes instead of the lists below)
#
# 1. the CUDA tests (tests/test_offload.py: CPU-offloaded blocks evaluated on the GPU, against the CPU numbers);
# 2. every method on CUDA at the default suite's settings (32 x 512 calibration, 16384 evaluation tokens), on the
#    SmolLM2-135M shape (random weights where the embedded model is not installed): cost, peak memory, achieved;
# 3. the same costs for the Llama-3-8B shape at 2048-token windows (random weights, bf16 on disk, fp32 in use),
#    with SparseGPT at two calibration sizes, so that cost per calibration sample can be read off.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT [TOKENIZER_FOLDER]}
tok=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
tokarg=(); [ -n "$tok" ] && tokarg=(--tokenizer "$tok")
step() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)"; local t=$(date +%s)
  timeout "$limit" "$@" 2>&1 | grep -v "^Loading weights" | tee "$out/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}, $(( $(date +%s) - t )) s"; }

nvidia-smi -L | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
step tests 150 python3 -m pytest tests/test_offload.py -q -rA -p no:cacheprovider
small=${PQQP_SMALL_RECIPES:-"dense; magnitude:p=0.5; wanda:p=0.5; sparsegpt:p=0.5; sparsegpt:nm=2:4; sleb:p=0.2; rtn:w=4,a=4,kv=4; \
gptq:w=4,g=64; quarot > gptq:w=4,g=64; share:r=0.9; mpq:avg=4,bits=3:4:6:8,order=prog,samples=2,probes=1,seqlen=128; \
rtn:w=6,a=6,kv=6 > lora:steps=30; sparsegpt:p=0.5 > gptq:w=4,g=64; gptq:w=4,g=64 > sparsegpt:p=0.5"}
step smollm2 200 python3 benchmarks/case_cost.py --random smollm2-135m "${tokarg[@]}" --json "$out/smollm2.json" \
  --recipes "$small"
large=${PQQP_LARGE_RECIPES:-"dense; wanda:p=0.5; sparsegpt:p=0.5; sparsegpt:p=0.5@40; gptq:w=4,g=128"}
step llama3-8b 330 python3 benchmarks/case_cost.py --random llama-3-8b --dtype bfloat16 "${tokarg[@]}" \
  --seqlen 2048 --calib-samples 16 --eval-tokens 20480 --json "$out/llama3-8b.json" \
  --recipes "$large"
