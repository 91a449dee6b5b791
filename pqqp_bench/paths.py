"""Where pqqp-bench keeps what it derives once: converted models, extracted corpora."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$PQQP_CACHE_DIR`, else `$XDG_CACHE_HOME/pqqp-bench`, else `~/.cache/pqqp-bench`."""
    if os.environ.get("PQQP_CACHE_DIR"):
        return Path(os.environ["PQQP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pqqp-bench"
