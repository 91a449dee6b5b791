#!/usr/bin/env bash
# Creates the virtualenv that runs the llm-compressor plugin (pqqp-llmcompressor); safe to run again.
#
#   bash plugins/llm-compressor/setup_venv.sh            # default venv: ${PQQP_CACHE_DIR:-~/.cache/pqqp-bench}/venvs/llmc
#   PQQP_LLMC_VENV=/path bash plugins/llm-compressor/setup_venv.sh
#   "$(bash plugins/llm-compressor/setup_venv.sh --print-python)" -m pytest plugins/llm-compressor/tests
#
# llm-compressor pins its own transformers (0.14.x: transformers >=5.15,<=5.17) and compressed-tensors (==0.19.0),
# older than the main environment's, so it gets a venv of its own. The venv sees the main environment's packages
# (--system-site-packages): torch is pinned to the version already installed there, so the CPU wheel is reused
# and never replaced by a download of the CUDA build; only what llm-compressor pins differently lands in the venv.
# The harness (this checkout) and the plugin are installed editable into the venv, so the venv always runs the
# code of the checkout the script belongs to (a CI clone elsewhere included).
set -euo pipefail
plugin=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$plugin/../.." && pwd)
PY=${PYTHON:-python3}
venv=${PQQP_LLMC_VENV:-${PQQP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pqqp-bench}/venvs/llmc}
if [ "${1:-}" = "--print-python" ]; then echo "$venv/bin/python"; exit 0; fi
pip_install() { "$venv/bin/python" -m pip install --quiet --no-input "$@"; }
start=$(date +%s)

if [ ! -x "$venv/bin/python" ]; then
  echo "setup_venv: creating $venv (--system-site-packages)"
  "$PY" -m venv --system-site-packages "$venv"
fi
torch_pin=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])") \
  || { echo "setup_venv: $PY has no torch: install the main environment first (bash scripts/setup.sh)" >&2; exit 1; }

# The harness and the plugin, editable, from this checkout (cheap: no dependency resolution, no build of wheels
# beyond the two editable stubs); redone only where the venv points at another checkout.
from_here() {  # $1: module, $2: folder it must be imported from
  "$venv/bin/python" -c "import $1, pathlib, sys; sys.exit(0 if pathlib.Path($1.__file__).resolve().is_relative_to(pathlib.Path('$2').resolve()) else 1)" 2>/dev/null
}
if ! from_here pqqp_bench "$repo/pqqp_bench"; then
  echo "setup_venv: installing the harness from $repo (editable, --no-deps: the venv sees the main environment's)"
  pip_install --no-deps -e "$repo"
fi
# llm-compressor comes with the plugin's dependencies (the pinned range in its pyproject.toml); torch is pinned to
# the main environment's version, so pip keeps that wheel.
has_llmc() {  # installed and importable, without importing it (that takes seconds)
  "$venv/bin/python" -c "import importlib.metadata as m, importlib.util as u, sys; m.version('llmcompressor'); sys.exit(u.find_spec('llmcompressor') is None)" 2>/dev/null
}
if ! has_llmc || ! from_here pqqp_llmc "$plugin/pqqp_llmc"; then
  echo "setup_venv: installing llm-compressor and the plugin (torch==$torch_pin kept from the main environment)"
  pip_install "torch==$torch_pin" -e "$plugin"
fi
# The plugin's methods must be in the harness's registry (not listed as broken), with the versions the venv holds
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
from pqqp_bench.methods import registry
found = registry()
missing = [name for name in ("llmc-sparsegpt", "llmc-wanda", "llmc-gptq", "llmc-rtn") if name not in found.methods]
if missing:
    raise SystemExit(f"setup_venv: the plugin's methods {missing} are not registered: {dict(found.broken)}")
print("setup_venv: done:", " | ".join(f"{d} {m.version(d)}" for d in ("llmcompressor", "transformers", "compressed-tensors", "torch", "pqqp-llmcompressor")))
PY
echo "setup_venv: python: $venv/bin/python (took $(( $(date +%s) - start )) s)"
