"""lm-eval's `pqqp` model type: a harness model, compressed by a recipe on load, evaluated through `HFLM`.

    pqqp lm-eval run --model pqqp \
        --model_args pretrained=smollm2-135m,recipe="wanda:p=0.3 > rtn:w=8,a=8,kv=8" --tasks pqqp_cloze

`pretrained` is anything the harness loads (embedded name, HF id, HF folder, .gguf file), through its model
cache; `recipe` is a harness recipe (default `dense`); `corpus`, `holdout`, `seqlen`, `calib_samples`, `seed`,
`schedule` (staged or fused) are the harness's settings (calibration data, and the context length lm-eval evaluates with). This module
imports lm_eval at the top: lm-eval imports it when asked for `--model pqqp` (see `pqqp_bench_lmeval`).
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from ..data import DEFAULT_CORPUS, DEFAULT_HOLDOUT
from ..models import DEFAULT_MODEL
from .lmeval import hflm_options


class PqqpLM(HFLM):
    """HFLM over a harness model compressed in memory by `recipe` (the same HFLM settings the harness uses)."""

    def __init__(self, pretrained: str = DEFAULT_MODEL, recipe: str = "dense", corpus: str = DEFAULT_CORPUS,
                 holdout: float = DEFAULT_HOLDOUT, seqlen: int = 512, calib_samples: int = 32, seed: int = 0,
                 cache_dir: str | None = None, trust_remote_code: bool = False, device: str | None = None,
                 batch_size: int | str = 1, schedule: str = "staged", **_ignored: Any) -> None:
        from ..experiment import Experiment, Settings

        cuda = str(device or "").startswith("cuda") and torch.cuda.is_available()
        settings = Settings(model=str(pretrained), corpus=str(corpus), seqlen=int(seqlen),
                            calib_samples=int(calib_samples), eval_tokens=int(seqlen), holdout=float(holdout),
                            seed=int(seed), device=str(device) if cuda else "cpu", cache_dir=cache_dir,
                            trust_remote_code=bool(trust_remote_code), schedule=str(schedule), progress=False)
        experiment = Experiment(settings)
        model, self.compression, _ = experiment.compressed(str(recipe))
        super().__init__(pretrained=model, tokenizer=experiment.loaded.tokenizer,
                         **hflm_options(settings.seqlen, batch_size))
