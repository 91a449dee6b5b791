"""Running `llmcompressor.oneshot` on a model the harness holds in memory, offline and quietly.

What oneshot needs that the harness does not have, and what it leaves behind, is handled here:

- Calibration: the harness has [n, seqlen] token ids. They go to oneshot as a `DataLoader` of
  `input_ids`/`attention_mask` batches of one sample, in order (oneshot takes a DataLoader as it is: no
  tokenizing, no shuffling, no download).
- oneshot wants a processor whenever a dataset is given, to tokenize text or to save it beside a checkpoint;
  neither happens here, so it gets `TokenIdsOnly`, which says so if it is ever asked to do anything.
- oneshot re-reads the model's config from `config.name_or_path` (it refuses checkpoints quantized in other
  formats); a model built in memory or read from GGUF has no such folder, so for the call the config points
  to a copy written to a temporary folder, and is pointed back afterwards.
- Logging: llm-compressor logs through loguru to stdout at INFO, and its pipelines draw tqdm bars. Its
  console output is switched off for the call; its warnings (e.g. a Hessian that could not be inverted, so
  GPTQ fell back to round-to-nearest) are collected and returned, to be recorded with the case, and printed
  only when `progress` is on. With `progress` off the bars (stderr) are swallowed too.
- Afterwards the model is dispatched (compressed-tensors' offloading on every module), carries flags and
  wrapped forwards on module instances and a wrapped `save_pretrained`: all undone (`undispatch`,
  `Attributes.restore`); oneshot's global session, which holds the model, is reset.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, redirect_stderr
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

LOGGERS = ("llmcompressor", "compressed_tensors")
NOT_RECORDED = ("No accelerator available",)  # the harness records its device itself


def library() -> ModuleType:
    """llmcompressor, imported on first use (it takes seconds: `pqqp methods` does not pay for it), with the
    warnings its import logs (no accelerator, ...) kept off the console."""
    if "llmcompressor" in sys.modules:
        return sys.modules["llmcompressor"]
    with environment(LLM_COMPRESSOR_LOG_LEVEL=os.environ.get("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")):
        import llmcompressor
    return llmcompressor


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the length of the block, then restore them as they were."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class TokenIdsOnly:
    """The processor handed to oneshot: the calibration data is already token ids, so nothing is tokenized,
    and nothing is saved. Any use of it is a change in llm-compressor this adapter must follow."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"llm-compressor asked the calibration processor for '{name}': this adapter passes token "
                             "ids only (a DataLoader), with no tokenizer")


def calibration_loader(tokens: torch.Tensor) -> DataLoader:
    """[n, seqlen] token ids as oneshot's calibration DataLoader: one sample a batch, in order."""
    ids = tokens.detach().long().cpu()
    rows = [{"input_ids": row.unsqueeze(0), "attention_mask": torch.ones_like(row).unsqueeze(0)} for row in ids]
    return DataLoader(rows, batch_size=None, shuffle=False)


@contextmanager
def config_on_disk(model: nn.Module) -> Iterator[None]:
    """Point the model's config at a copy of itself in a temporary folder for the block (see module notes)."""
    config = model.config
    before = config.name_or_path
    with tempfile.TemporaryDirectory(prefix="pqqp-llmc-config-") as folder:
        config.save_pretrained(folder)
        config.name_or_path = folder
        try:
            yield
        finally:
            config.name_or_path = before


@dataclass
class Messages:
    """The warnings llm-compressor and compressed-tensors logged during a call."""

    echo: bool
    lines: list[str] = field(default_factory=list)

    def __call__(self, message: Any) -> None:
        record = message.record
        if record["level"].name == "METRIC":  # per-layer loss and timing, at a level above WARNING
            return
        line = f"{record['name'].split('.')[0]}: {record['message']}".splitlines()[0]
        if record["message"].startswith(NOT_RECORDED) or line in self.lines:
            return
        self.lines.append(line)
        if self.echo:
            print(line, file=sys.stderr)


@contextmanager
def quiet(progress: bool) -> Iterator[Messages]:
    """llm-compressor's console output off for the block; its warnings collected (and echoed with `progress`).
    Without `progress`, its tqdm bars and torch.fx's tracing notice are kept off stderr too."""
    llmc = library()
    from loguru import logger

    llmc.configure_logger(llmc.LoggerConfig(console_log_level=None))
    messages = Messages(echo=progress)
    handler = logger.add(messages, level="WARNING", filter=lambda record: record["name"].startswith(LOGGERS))
    fx = logging.getLogger("torch.fx")
    level = fx.level
    try:
        if not progress:
            fx.setLevel(logging.ERROR)
        with nullcontext() if progress else redirect_stderr(io.StringIO()):
            yield messages
    finally:
        fx.setLevel(level)
        logger.remove(handler)


@dataclass(frozen=True)
class Attributes:
    """What each module of a model holds, by name, taken before oneshot: instance attributes, child modules,
    parameters, buffers and forward hooks."""

    names: dict[int, tuple[frozenset, ...]]

    @staticmethod
    def stores(module: nn.Module) -> tuple[dict, ...]:
        return (module._modules, module._parameters, module._buffers, module._forward_hooks,
                module._forward_pre_hooks, module._forward_hooks_with_kwargs, module._forward_pre_hooks_with_kwargs,
                module._forward_hooks_always_called)

    @classmethod
    def held(cls, module: nn.Module) -> tuple[frozenset, ...]:
        return tuple(frozenset(names) for names in (vars(module), *cls.stores(module)))

    @classmethod
    def of(cls, model: nn.Module) -> Attributes:
        return cls({id(module): cls.held(module) for module in model.modules()})

    def restore(self, model: nn.Module) -> None:
        """Delete what oneshot added: forwards it wrapped, `quantization_enabled` (set on every module),
        `quantization_status`, the model's wrapped `save_pretrained`; and where a run failed half-way, the
        observers (child modules), qparams and calibration hooks it attached. Call after `undispatch`."""
        for module in list(model.modules()):
            if id(module) not in self.names:
                continue
            attributes, *stores = self.names[id(module)]
            for name in set(vars(module)) - attributes:
                delattr(module, name)
            for store, names in zip(self.stores(module), stores, strict=True):
                for name in set(store) - names:
                    del store[name]


def undispatch(model: nn.Module) -> None:
    """Remove compressed-tensors' offloading from every module (oneshot's sequential pipeline puts it on all of
    them and leaves it): parameters become plain again, on the device they were on."""
    from compressed_tensors.offload import remove_dispatch

    remove_dispatch(model)


def run_oneshot(model: nn.Module, modifiers: list[Any], calibration: torch.Tensor | None, progress: bool) -> list[str]:
    """Apply `modifiers` to `model` in place through oneshot; the warnings it logged.

    The caller then `undispatch`es the model, finishes the quantized modules (`convert.finish_quantized`) and
    restores the module `Attributes` taken before.
    """
    llmc = library()
    loader = None if calibration is None else calibration_loader(calibration)
    length = {} if calibration is None else {"num_calibration_samples": calibration.shape[0],
                                             "max_seq_length": calibration.shape[1]}
    # oneshot sets TOKENIZERS_PARALLELISM (with a warning) when it is unset: set it for the call only
    with quiet(progress) as messages, config_on_disk(model), environment(TOKENIZERS_PARALLELISM="false"):
        try:
            llmc.oneshot(model=model, recipe=modifiers, dataset=loader, processor=TokenIdsOnly(),
                         shuffle_calibration_samples=False, **length)
        finally:  # the global session holds the model and the modifiers' state: dropped, also after a failure
            llmc.reset_session()
    return messages.lines
