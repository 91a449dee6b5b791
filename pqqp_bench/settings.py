"""The settings of an experiment: every knob, with its default and accepted values, checked when it is made.

This module imports nothing heavy (torch is imported where a device is resolved), so the command line can show
defaults and refuse bad values before torch and transformers load.

A bad value is refused here, in one line naming it and what is accepted, before any model or corpus loads; what
needs the model (seqlen against its context, the corpus's size) is checked when the experiment loads it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import PqqpError

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_CORPUS = "pydoc"
DEFAULT_HOLDOUT = 0.2
BOS_SETTINGS = ("auto", "always", "never")  # how windows start (data.bos_token)
SCHEDULES = ("staged", "fused")  # how a recipe's layer-scope stages share calibration passes (compress.passes)
OFFLOAD_MODES = ("none", "cpu", "disk")  # where decoder blocks wait for their turn (offload.py)

def check_bos(setting: str) -> None:
    if setting not in BOS_SETTINGS:
        raise PqqpError(f"bos={setting!r} is not accepted: {', '.join(BOS_SETTINGS)} (auto: as the tokenizer does)")


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise PqqpError(f"unknown schedule {schedule!r}: accepted {', '.join(SCHEDULES)}")
    return schedule


def check_mode(mode: str) -> str:
    """An offload mode."""
    if mode not in OFFLOAD_MODES:
        raise PqqpError(f"offload {mode!r} is not accepted: use one of {', '.join(OFFLOAD_MODES)}")
    return mode


SEED_LIMIT = 2 ** 63  # torch.manual_seed and the store's INTEGER column take seeds below this


def check_count(name: str, value: object, low: int, high: int | None = None) -> None:
    """An integer setting in [low, high)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value >= high):
        accepted = f"an integer >= {low}" if high is None else f"an integer in {low}..{high - 1}"
        raise PqqpError(f"{name}={value!r} is not accepted: {accepted}")


def check_text(name: str, value: object, accepted: str) -> None:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise PqqpError(f"{name}={value!r} is not accepted: {accepted}")


def check_folder(name: str, value: str | None) -> None:
    """A folder the harness writes into: absent (it is created) or a folder, never a file."""
    if value is not None and Path(value).expanduser().exists() and not Path(value).expanduser().is_dir():
        raise PqqpError(f"{name}={value!r} is a file: accepted a folder (created where missing)")


PREDICTORS = ("intensity", "probe", "pairwise", "probe-intensity")
"""The order predictors (predictors.py) by name: what `pqqp order --predictor` and `order_search.predictor` accept."""

@dataclass(frozen=True)
class Settings:
    """Every knob of an experiment; the CLI flags and pytest options map onto these one to one."""

    model: str = DEFAULT_MODEL
    corpus: str = DEFAULT_CORPUS
    seqlen: int = 512
    calib_samples: int = 32
    eval_tokens: int = 16384
    holdout: float = DEFAULT_HOLDOUT
    bos: str = "auto"  # windows start with BOS: auto (as the tokenizer does), always, never (data.bos_token)
    seed: int = 0
    batch_size: int = 1
    device: str = "auto"
    offload: str = "none"  # none, cpu, disk: where the decoder blocks live between their turns (offload.py)
    schedule: str = "staged"  # staged (one pass per stage, paper §2) or fused (compress.passes)
    prefix_cache: float = 2.0  # GiB of compressed recipe prefixes kept for reuse (prefixes.py); 0 turns it off
    prefix_cache_dir: str | None = None  # also keep them there, as safetensors + JSON (shared by workers, kept)
    cache_dir: str | None = None
    trust_remote_code: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        """Every value checked on construction, before anything loads (one line naming the value and what is
        accepted); what needs the model (seqlen against its context, the corpus's size) is checked on loading."""
        check_text("model", self.model, "an embedded name, HF hub id, HF folder or .gguf file")
        check_text("corpus", self.corpus, "pydoc, austen, wikitext2, or a .txt/.jsonl path")
        check_count("seqlen", self.seqlen, 2)
        check_count("calib_samples", self.calib_samples, 1)
        check_count("eval_tokens", self.eval_tokens, self.seqlen)
        check_count("batch_size", self.batch_size, 1)
        check_count("seed", self.seed, 0, SEED_LIMIT)
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)) or not 0.0 < self.holdout < 1.0:
            raise PqqpError(f"holdout={self.holdout!r} is not accepted: a fraction in (0, 1), e.g. {DEFAULT_HOLDOUT}")
        check_bos(self.bos)
        check_schedule(self.schedule)
        check_mode(self.offload)
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise PqqpError(f"unknown device {self.device!r}: accepted auto, cpu, cuda, cuda:N")
        if isinstance(self.prefix_cache, bool) or not isinstance(self.prefix_cache, (int, float)) \
                or not math.isfinite(self.prefix_cache) or self.prefix_cache < 0:
            raise PqqpError(f"prefix_cache={self.prefix_cache!r} is not accepted: GiB, a finite number >= 0 (0 turns "
                            f"reuse off)")
        for name in ("prefix_cache_dir", "cache_dir"):
            check_folder(name, getattr(self, name))

    def resolved_device(self) -> str:
        import torch  # here, so that reading the settings (the CLI's --help) does not load torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise PqqpError(f"device {self.device!r} asked for, but torch sees no CUDA device: accepted auto, cpu")
        if not self.device.startswith(("cpu", "cuda")):
            raise PqqpError(f"unknown device {self.device!r}: accepted auto, cpu, cuda, cuda:N")
        return self.device


@dataclass(frozen=True)
class Knob:
    """One setting as every front end shows it: the `Settings` field `name`, the suite key and `--pqqp-<key>`
    option it is in a suite (`suite_key`: `models`, `seeds` take lists), its `pqqp` flag, and its help."""

    name: str
    kind: type
    help: str
    suite_key: str = ""
    choices: tuple[str, ...] = ()
    data: bool = False  # one of the model, corpus and window settings every command that names measurements takes

    @property
    def key(self) -> str:
        return self.suite_key or self.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default(self) -> object:
        return getattr(Settings, self.name)


KNOBS: tuple[Knob, ...] = (
    Knob("model", str, "embedded name, HF hub id, local HF folder, or .gguf file", suite_key="models", data=True),
    Knob("corpus", str, "pydoc, austen, wikitext2 (needs pqqp-bench[hub] and the hub), or a .txt/.jsonl path",
         data=True),
    Knob("seqlen", int, "tokens per calibration sample and per evaluation window", data=True),
    Knob("calib_samples", int, "calibration windows, drawn without overlap by the seed", data=True),
    Knob("eval_tokens", int, "evaluation tokens, cut into windows of seqlen", data=True),
    Knob("holdout", float, "the last fraction of the corpus, kept for evaluation only", data=True),
    Knob("bos", str, "windows start with BOS: auto (where the tokenizer adds it), always, never",
         choices=BOS_SETTINGS, data=True),
    Knob("seed", int, "calibration sampling and randomised methods", suite_key="seeds", data=True),
    Knob("batch_size", int, "evaluation windows per forward pass (1 is fastest on CPU; raise it on a GPU)"),
    Knob("device", str, "auto (cuda when present, else cpu), cpu, cuda, cuda:N"),
    Knob("offload", str, "where decoder blocks wait for their turn: none (all on the device), cpu (host memory), "
                         "disk (read from the safetensors files): for models larger than memory; layer-scope "
                         "methods and ppl only", choices=OFFLOAD_MODES),
    Knob("schedule", str, "staged: every stage its own calibration pass over the model the earlier stages left, as "
                          "the paper composes methods; fused: consecutive layer-scope stages block by block in one "
                          "pass", choices=SCHEDULES),
    Knob("prefix_cache", float, "GiB of compressed recipe prefixes kept in memory, so a recipe starts from the "
                                "longest one already computed; 0 turns reuse off"),
    Knob("prefix_cache_dir", str, "also keep the prefix cache in this folder (safetensors + JSON): shared by "
                                  "workers on one filesystem, and by later runs"),
)
"""Every setting of an experiment, declared once: the `pqqp` flags (`cli.py`), the `--pqqp-*` options
(`pytest_plugin.py`) and the suite keys (`suite.py`) take their names, help and defaults from here, and the
README's option table is this table (`markdown_table`, checked by a test)."""


def markdown_table() -> str:
    """The README's option table of the settings."""
    rows = ["| option (CLI / pytest) | suite key | default | meaning |", "|---|---|---|---|"]
    for knob in KNOBS:
        default = "none" if knob.default is None else f"`{knob.default}`"
        option = f"--pqqp-{knob.name.replace('_', '-')}"  # --pqqp-model and --pqqp-seed: aliases of the list keys
        rows.append(f"| `{knob.flag}` / `{option}` | `{knob.key}` | {default} | {knob.help} |")
    return "\n".join(rows)
