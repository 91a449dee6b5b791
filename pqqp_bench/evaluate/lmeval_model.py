"""lm-eval's `pqqp` model type: a harness model, compressed by a recipe on load, evaluated through `HFLM`.

    pqqp lm-eval run --model pqqp \
        --model_args pretrained=smollm2-135m 'recipe="wanda:p=0.3 > rtn:w=8,a=8,kv=8"' --tasks pqqp_cloze

`pretrained` is anything the harness loads (embedded name, HF id, HF folder, .gguf file), through its model
cache; `recipe` is a harness recipe (default `dense`); `corpus`, `holdout`, `seqlen`, `calib_samples`, `seed`,
`schedule` (staged or fused), `bos` (auto, always, never) are the harness's settings (calibration data, and the
context length lm-eval evaluates with). Unknown keys and values of the wrong type are refused (`parse_model_args`).
This module imports lm_eval at the top: lm-eval imports it when asked for `--model pqqp` (see `pqqp_bench_lmeval`).
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from ..settings import DEFAULT_CORPUS, DEFAULT_HOLDOUT, DEFAULT_MODEL
from ..errors import PqqpError
from ..spec import parse_recipe
from .lmeval import hflm_options


MODEL_ARGS: dict[str, tuple[type, ...]] = {
    "pretrained": (str,), "recipe": (str,), "corpus": (str,), "holdout": (float, int), "seqlen": (int,),
    "calib_samples": (int,), "seed": (int,), "schedule": (str,), "bos": (str,), "cache_dir": (str, type(None)),
    "trust_remote_code": (bool,), "device": (str, type(None)), "batch_size": (int, str),
}
"""`--model pqqp`'s model_args and the types lm-eval's parser gives them (`true` is a bool, `512` an int)."""
LM_EVAL_ADDS = ("max_batch_size",)
"""What lm-eval's own command line adds to every model's arguments (batch_size and device are model_args too)."""


def parse_model_args(given: dict[str, Any]) -> tuple[Any, str, int | str]:
    """(Settings, recipe, batch size) from lm-eval's model_args, strictly: an unknown key (a misspelt one, or the
    pieces of an unquoted recipe that lm-eval cut at its commas) or a value of the wrong type is one line."""
    from ..settings import Settings

    unknown = [k for k in given if k not in MODEL_ARGS and k not in LM_EVAL_ADDS]
    if unknown:
        hint = (" (lm-eval cuts model_args at commas: quote a recipe that has them, 'recipe=\"rtn:w=8,a=8,kv=8\"')"
                if "recipe" in given else "")
        raise PqqpError(f"--model pqqp does not take model_args {unknown[0]!r}={given[unknown[0]]!r}: accepted "
                        f"{', '.join(MODEL_ARGS)}{hint}")
    for name, value in given.items():
        kinds = MODEL_ARGS.get(name)
        if kinds and (not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))):
            words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "none"}
            accepted = " or ".join(dict.fromkeys(words[k] for k in kinds))
            raise PqqpError(f"model_args {name}={value!r} is not accepted: {accepted}")
    device = given.get("device")
    cuda = str(device or "").startswith("cuda") and torch.cuda.is_available()
    settings = Settings(model=given.get("pretrained", DEFAULT_MODEL), corpus=given.get("corpus", DEFAULT_CORPUS),
                        seqlen=given.get("seqlen", 512), calib_samples=given.get("calib_samples", 32),
                        eval_tokens=given.get("seqlen", 512), holdout=float(given.get("holdout", DEFAULT_HOLDOUT)),
                        seed=given.get("seed", 0), bos=given.get("bos", "auto"), device=str(device) if cuda else "cpu",
                        cache_dir=given.get("cache_dir"), trust_remote_code=given.get("trust_remote_code", False),
                        schedule=given.get("schedule", "staged"), progress=False)
    recipe = given.get("recipe", "dense")
    parse_recipe(recipe)  # a bad recipe fails before the model loads
    return settings, recipe, given.get("batch_size", 1)


class PqqpLM(HFLM):
    """HFLM over a harness model compressed in memory by `recipe` (the same HFLM settings the harness uses)."""

    def __init__(self, **model_args: Any) -> None:
        from ..experiment import Experiment

        settings, recipe, batch_size = parse_model_args(model_args)
        experiment = Experiment(settings)
        model, self.compression, _ = experiment.compressed(recipe)
        super().__init__(pretrained=model, tokenizer=experiment.loaded.tokenizer,
                         **hflm_options(settings.seqlen, batch_size))
