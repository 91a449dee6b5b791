"""The settings of an experiment: every knob, with its default and accepted values, checked when it is made.

This module imports nothing heavy (torch is imported where a device is resolved), so the command line can show
defaults and refuse bad values before torch and transformers load.

A bad value is refused here, in one line naming it and what is accepted, before any model or corpus loads; what
needs the model (seqlen against its context, the corpus's size) is checked when the experiment loads it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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

def knob(default: object, help: str, *, suite_key: str = "", choices: tuple[str, ...] = (), data: bool = False) -> Any:
    """A field of `Settings` that every front end shows (a `Knob`): the suite key, `--pqqp-*` option and `pqqp` flag
    of that name, with this help. `suite_key`: the suite's list key where it differs (`models`, `seeds`); `data`:
    one of the model, corpus and window settings every command naming measurements takes."""
    return field(default=default, metadata={"knob": {"help": help, "suite_key": suite_key, "choices": choices,
                                                     "data": data}})


@dataclass(frozen=True)
class Settings:
    """Every knob of an experiment, declared once: a field made by `knob` is a setting of every front end (the
    `pqqp` flags, the `--pqqp-*` options, the suite keys, the README's table); its check is in `__post_init__`."""

    model: str = knob(DEFAULT_MODEL, "embedded name, HF hub id, local HF folder, or .gguf file", suite_key="models",
                      data=True)
    corpus: str = knob(DEFAULT_CORPUS, "pydoc, austen, wikitext2 (needs pqqp-bench[hub] and the hub), or a .txt/.jsonl "
                                       "path", data=True)
    seqlen: int = knob(512, "tokens per calibration sample and per evaluation window", data=True)
    calib_samples: int = knob(32, "calibration windows, drawn without overlap by the seed", data=True)
    eval_tokens: int = knob(16384, "evaluation tokens, cut into windows of seqlen", data=True)
    holdout: float = knob(DEFAULT_HOLDOUT, "the last fraction of the corpus, kept for evaluation only", data=True)
    bos: str = knob("auto", "windows start with BOS: auto (where the tokenizer adds it), always, never",
                    choices=BOS_SETTINGS, data=True)  # data.bos_token
    seed: int = knob(0, "calibration sampling and randomised methods", suite_key="seeds", data=True)
    batch_size: int = knob(1, "evaluation windows per forward pass (1 is fastest on CPU; raise it on a GPU)")
    device: str = knob("auto", "auto (cuda when present, else cpu), cpu, cuda, cuda:N")
    offload: str = knob("none", "where decoder blocks wait for their turn: none (all on the device), cpu (host "
                                "memory), disk (read from the safetensors files): for models larger than memory; "
                                "layer-scope methods and ppl only", choices=OFFLOAD_MODES)  # offload.py
    schedule: str = knob("staged", "staged: every stage its own calibration pass over the model the earlier stages "
                                   "left, as the paper composes methods; fused: consecutive layer-scope stages block by "
                                   "block in one pass", choices=SCHEDULES)  # compress.passes
    prefix_cache: float = knob(2.0, "GiB of compressed recipe prefixes kept in memory, so a recipe starts from the "
                                    "longest one already computed; 0 turns reuse off")  # prefixes.py
    prefix_cache_dir: str | None = knob(None, "also keep the prefix cache in this folder (safetensors + JSON): shared "
                                              "by workers on one filesystem, and by later runs")
    # the process's own, not a setting of the measurement
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
    type: str  # the field's annotation, as written
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


KINDS = {"str": str, "int": int, "float": float, "str | None": str}

KNOBS: tuple[Knob, ...] = tuple(Knob(f.name, KINDS[str(f.type)], str(f.type), **f.metadata["knob"])
                                for f in fields(Settings) if "knob" in f.metadata)
"""Every setting of an experiment, from the `knob` fields of `Settings`: the `pqqp` flags (`cli.py`), the
`--pqqp-*` options (`pytest_plugin.py`) and the suite keys (`suite.py`, whose fields are made from these) take their
names, types, help and defaults from here, and the README's option table is this table (`markdown_table`, checked
by a test)."""


def markdown_table() -> str:
    """The README's option table of the settings."""
    rows = ["| option (CLI / pytest) | suite key | default | meaning |", "|---|---|---|---|"]
    for knob in KNOBS:
        default = "none" if knob.default is None else f"`{knob.default}`"
        option = f"--pqqp-{knob.name.replace('_', '-')}"  # --pqqp-model and --pqqp-seed: aliases of the list keys
        rows.append(f"| `{knob.flag}` / `{option}` | `{knob.key}` | {default} | {knob.help} |")
    return "\n".join(rows)
