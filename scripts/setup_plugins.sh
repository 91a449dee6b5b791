#!/usr/bin/env bash
# Installs the optional plugins (plugins/README.md) after scripts/setup.sh; safe to run again.
#
#   bash scripts/setup_plugins.sh     # pqqp-quanto into this environment, pqqp-llmcompressor into its own venv
#
# pqqp-quanto: optimum-quanto 0.2.7 fits this environment (torch pinned to the installed one, so pip never swaps
# it). On a machine without a GPU quanto JIT-compiles its C++ unpack kernel the first time int4/int2 weights are
# dequantized (about 2 minutes on 2 cores, needs g++ and the Python headers): done here, once, not in a test.
# pqqp-llmcompressor: llm-compressor pins an older transformers, so plugins/llm-compressor/setup_venv.sh gives it
# a venv that sees this environment's packages (its python: setup_venv.sh --print-python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
torch_pin=$("$PY" -c "import torch; print(torch.__version__)")

if ! "$PY" -c "import importlib.metadata as m; m.version('pqqp-quanto'); m.version('optimum-quanto')" 2>/dev/null; then
  echo "setup_plugins: installing pqqp-quanto and optimum-quanto (torch==$torch_pin kept)"
  locked=(-c constraints.txt); [ "${PQQP_UNLOCKED:-0}" = 1 ] && locked=()
  "$PY" -m pip install --quiet --no-input "${locked[@]}" "torch==$torch_pin" -e plugins/optimum-quanto
fi
if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  start=$(date +%s)
  "$PY" -c "from optimum.quanto.library.extensions.cpp import ext; ext.lib" >/dev/null 2>&1 \
    || echo "setup_plugins: note: quanto's C++ kernel did not build (no compiler?): int4/int2 quanto runs will try again"
  echo "setup_plugins: quanto's CPU kernel ready ($(( $(date +%s) - start )) s)"
fi

bash plugins/llm-compressor/setup_venv.sh
