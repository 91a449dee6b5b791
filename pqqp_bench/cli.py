"""`pqqp`: run recipes, and list the models, corpora and methods available here.

Bad input prints one line `pqqp: error: ...` naming the bad value and what is accepted, and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from tabulate import tabulate
from transformers.utils import logging as hf_logging

from . import __version__
from .data import available_corpora
from .errors import PqqpError
from .experiment import CaseResult, Experiment, Settings
from .methods import METHODS
from .models import available_models
from .spec import parse_recipe


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument("--model", default=d.model, help=f"embedded name, HF hub id, HF folder or .gguf file (default {d.model})")
    parser.add_argument("--corpus", default=d.corpus, help=f"pydoc, austen, wikitext2, or a .txt/.jsonl path (default {d.corpus})")
    parser.add_argument("--seqlen", type=int, default=d.seqlen, help=f"tokens per calibration sample and evaluation window (default {d.seqlen})")
    parser.add_argument("--calib-samples", type=int, default=d.calib_samples, help=f"calibration windows (default {d.calib_samples})")
    parser.add_argument("--eval-tokens", type=int, default=d.eval_tokens, help=f"evaluation tokens, cut into windows of seqlen (default {d.eval_tokens})")
    parser.add_argument("--holdout", type=float, default=d.holdout, help=f"fraction of the corpus held out for evaluation (default {d.holdout})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of calibration sampling and randomised methods (default {d.seed})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"evaluation windows per forward pass (default {d.batch_size})")
    parser.add_argument("--device", default=d.device, help="auto (cuda if present), cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--cache-dir", default=None, help="where converted models are cached (default $PQQP_CACHE_DIR or ~/.cache/pqqp-bench)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def settings_from(args: argparse.Namespace) -> Settings:
    values = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    return Settings(**values, progress=not args.no_progress)


def describe(case: CaseResult) -> str:
    req, ach = case.report.requested, case.report.achieved()
    bits = " ".join(f"{k.upper()}{ach[f'{k}_bits']}" for k in ("w", "a", "kv") if ach[f"{k}_bits"]) or "fp32"
    p = case.perplexity
    return "\n".join(
        [
            f"recipe     {case.recipe}   [{case.order or 'dense'}, key {case.key}]",
            f"requested  C_P {req['prune']:.3f}  C_Q {req['quant']:.3f}  total {req['total']:.3f}",
            f"achieved   sparsity {ach['sparsity']:.4f} (all zeros {ach['zero_fraction']:.4f}), {bits}"
            f"  ->  C_P {ach['prune']:.3f}  C_Q {ach['quant']:.3f}  total {ach['total']:.3f}",
            f"perplexity {p.ppl:.4f}   ({p.convention}: {p.windows} x {p.seqlen} tokens)",
            f"time       compress {case.seconds['compress']:.1f} s, evaluate {case.seconds['evaluate']:.1f} s",
        ]
    )


def command_run(args: argparse.Namespace) -> int:
    recipes = [parse_recipe(text) for text in args.recipe]  # fail on a bad recipe before loading anything
    if args.both_orders:
        recipes += [r.reversed() for r in recipes if len(r.stages) > 1 and r.reversed() not in recipes]
    if args.dense and all(r.stages for r in recipes):
        recipes.insert(0, parse_recipe("dense"))
    experiment = Experiment(settings_from(args))
    s = experiment.settings
    print(f"model {s.model} ({experiment.loaded.source}) on {experiment.device}; corpus {experiment.corpus.name}: "
          f"{experiment.corpus.split}; calibration {s.calib_samples} x {s.seqlen} tokens, seed {s.seed}; "
          f"loaded in {experiment.load_seconds:.1f} s")
    results = []
    for recipe in recipes:
        case = experiment.run(recipe)
        print("\n" + describe(case), flush=True)
        results.append(case)
    rows = [(c.recipe, c.order or "-", f"{c.report.achieved()['total']:.2f}", f"{c.perplexity.ppl:.4f}",
             f"{c.seconds['compress']:.1f}", f"{c.seconds['evaluate']:.1f}") for c in results]
    print("\n" + tabulate(rows, headers=["recipe", "order", "C total", "ppl", "compress s", "eval s"]))
    if args.json:
        payload = {"settings": s.__dict__, "model_fingerprint": experiment.loaded.fingerprint,
                   "results": [c.summary() for c in results]}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    return 0


def command_models(args: argparse.Namespace) -> int:
    print(tabulate(available_models(), headers=["name", "status", "model"]))
    print("\nAlso accepted: any HF hub id (where the hub or its cache is reachable), a local HF folder, a .gguf file.")
    return 0


def command_corpora(args: argparse.Namespace) -> int:
    print(tabulate(available_corpora(), headers=["corpus", "status"]))
    return 0


def command_methods(args: argparse.Namespace) -> int:
    rows = [
        (m.name, m.kind, m.granularity, "yes" if m.needs_calibration else "no",
         ", ".join(f"{p.name} ({p.accepted})" for p in m.params), m.summary)
        for m in METHODS.values()
    ]
    print(tabulate(rows, headers=["method", "kind", "granularity", "calibration", "parameters", "what"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pqqp", description="Benchmark the order of pruning and quantization.")
    parser.add_argument("--version", action="version", version=f"pqqp-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="compress with recipes and measure perplexity")
    run.add_argument("--recipe", action="append", required=True,
                     help="an ordered recipe, e.g. 'wanda:p=0.3 > rtn:w=4,a=4,kv=4' (repeatable; 'dense' for none)")
    run.add_argument("--both-orders", action="store_true", help="also run each multi-stage recipe in reverse order")
    run.add_argument("--dense", action="store_true", help="also measure the dense model")
    run.add_argument("--json", help="write every result to this JSON file")
    add_settings_arguments(run)
    run.set_defaults(func=command_run)
    for name, func, text in (("models", command_models, "list the embedded models"),
                             ("corpora", command_corpora, "list the corpora and why one is missing"),
                             ("methods", command_methods, "list the compression methods and their parameters")):
        sub.add_parser(name, help=text).set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "no_progress", False)
    if quiet:  # transformers' own weight-loading bars; ours follow Settings.progress
        hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except PqqpError as exc:
        print(f"pqqp: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
