"""`pqqp`: run recipes, build the leaderboard, gate a store on a baseline, and list the models, corpora and
methods available here.

Bad input prints one line `pqqp: error: ...` naming the bad value and what is accepted, and exits 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from tabulate import tabulate

from . import __version__
from .errors import PqqpError
from .paths import output_file, output_folder, same_file, write_text
from .ray_runner import ADDRESSES, LOCAL, RAY_OPTIONS
from .sections import options as section_options
from .settings import KNOBS, PREDICTORS, Knob, Settings
from .store import default_store_path

if TYPE_CHECKING:  # torch and transformers load with these: each command imports what it uses, so --help is quick
    from .experiment import CaseResult, Experiment
    from .measure import Bench
    from .store import Store
    from .suite import Suite


SUITE_KEYS = tuple(knob.name for knob in KNOBS if not knob.suite_key)  # the settings a suite holds as they are
GRID_FLAGS = ("seeds", *section_options())  # the grid's and sections' keys (sections/__init__.py) as `pqqp run --suite` flags


def add_knob(parser: argparse.ArgumentParser, knob: Knob, default: str) -> None:
    """One setting of `settings.KNOBS` as a flag; `default` says in the help what the flag left out means."""
    parser.add_argument(knob.flag, type=knob.kind, default=None, choices=knob.choices or None,
                        help=f"{knob.help} ({default})")


def add_data_arguments(parser: argparse.ArgumentParser, default: Callable[[str], str]) -> None:
    """The model, corpus and window settings as flags; `default(name)` says what a flag left out means."""
    for knob in KNOBS:
        if knob.data:
            add_knob(parser, knob, default(knob.name))


def add_grid_arguments(parser: argparse.ArgumentParser, text: str) -> None:
    """`GRID_FLAGS` as options overriding the suite's keys; `text` starts each help."""
    helps = section_options()
    for flag in GRID_FLAGS:
        what = helps.get(flag, "calibration seeds, e.g. 0,1,2")
        parser.add_argument(f"--{flag.replace('_', '-')}", default=None, help=f"{text} {flag}: {what}")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting of `settings.KNOBS` as a flag, with the process's own (threads, cache, progress)."""
    for knob in KNOBS:
        add_knob(parser, knob, "default " + ("none" if knob.default is None else f"{knob.default}"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this process (default: all cores)")
    parser.add_argument("--cache-dir", default=None, help="where converted models are cached (default $PQQP_CACHE_DIR or ~/.cache/pqqp-bench)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the flags given; a flag left out keeps the Settings default."""
    values = {f.name: getattr(args, f.name) for f in fields(Settings) if getattr(args, f.name, None) is not None}
    return Settings(**{**values, "trust_remote_code": args.trust_remote_code}, progress=not args.no_progress)


def describe(case: "CaseResult") -> str:
    from .compress import bits_label

    req, ach = case.report.requested, case.report.achieved()
    bits = bits_label(ach) or "fp32"
    p = case.perplexity
    return "\n".join(
        [
            f"recipe     {case.recipe}   [{case.order or 'dense'}, key {case.key}]",
            f"requested  C_P {req['prune']:.3f}  C_Q {req['quant']:.3f}  total {req['total']:.3f}",
            f"achieved   sparsity {ach['sparsity']:.4f} (all zeros {ach['zero_fraction']:.4f}), {bits}"
            f"  ->  C_P {ach['prune']:.3f}  C_Q {ach['quant']:.3f}  total {ach['total']:.3f}",
            f"perplexity {p.ppl:.4f}   ({p.convention}: {p.windows} x {p.seqlen} tokens, window start: {p.bos})",
            f"time       compress {case.seconds['compress']:.1f} s, evaluate {case.seconds['evaluate']:.1f} s",
            *(f"flagged    {line}" for line in case.report.flags),
        ]
    )


def suite_of(args: argparse.Namespace, **extra: Any) -> "Suite":
    """The `--suite` file with the command line's settings and grid overrides (the keys `pytest suites/` takes as
    `--pqqp-*`): `--model` sets the suite's models, `--seed` its seeds; `extra` sets further keys."""
    from .sections import load_suite

    given = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    overrides = {k: v for k, v in given.items() if v is not None and k in SUITE_KEYS}
    if given.get("model") is not None:
        overrides["models"] = given["model"]
    if given.get("seed") is not None:
        overrides["seeds"] = str(given["seed"])
    grid = {k: getattr(args, k) for k in GRID_FLAGS if getattr(args, k, None) is not None}
    return load_suite(args.suite, **overrides, **grid, **{k: v for k, v in extra.items() if v is not None})


def add_suite_overrides(parser: argparse.ArgumentParser) -> None:
    """The model, corpus and evaluation settings and the grid flags of `pqqp run --suite`, for the commands that
    read a suite's stored results (leaderboard, gate), so a run on another model is published without a new YAML."""
    add_data_arguments(parser, lambda name: "default: the suite's" + ("; comma-separated" if name == "model" else ""))
    add_knob(parser, next(k for k in KNOBS if k.name == "schedule"), "default: the suite's")
    add_grid_arguments(parser, "override the suite's")


def command_suite(args: argparse.Namespace) -> int:
    """`pqqp run --suite FILE`: the grid `pytest suites/` runs, without pytest, through the same store."""
    from tqdm.auto import tqdm

    from .measure import Bench, progress_line
    from .analysis import Analysis
    from .sections import active, full_report
    from .store import Store

    suite = suite_of(args)
    if args.json:
        output_file("--json", args.json, [args.store, args.suite, *suite_inputs(suite)])
    with Store(args.store) as store:
        bench = Bench(suite, store, refresh=args.refresh, progress=not args.no_progress, cache_dir=args.cache_dir,
                      trust_remote_code=args.trust_remote_code, vllm_venv=args.vllm_venv)
        cases = suite.cases()
        print(f"suite {suite.name} ({suite.source}): {len(cases)} cases x {len(suite.seeds)} seed(s); store {args.store}",
              flush=True)
        if args.ray is not None:  # the missing cases on Ray first; the loop below then finds them stored
            from .ray_runner import run_on_ray

            done = run_on_ray(suite, store, address=args.ray,
                              **{o.name: getattr(args, f"ray_{o.name}") for o in RAY_OPTIONS}, refresh=args.refresh, cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code,
                              progress=not args.no_progress)
            bench.computed.extend(done.digests)  # refreshed already: not again
        bar = tqdm(cases, desc="cases", unit="case", disable=args.no_progress)
        for index, case in enumerate(bar, 1):
            for m in bench.measure_case(case):
                bar.write(progress_line(index, len(cases), m))
        for section in active(suite):  # what is not a case of the suite's metric (throughput)
            section.run(bench, lambda line: print(line, flush=True))
        print("\n" + full_report(Analysis(Bench(suite, store, lookup_only=True, cache_dir=args.cache_dir))))
        if args.json:
            count = store.export_json(args.json)
            print(f"\n{count} stored measurements written to {args.json}")
    return 0


def existing_store(path: str) -> str:
    if not Path(path).is_file():
        raise PqqpError(f"store {path!r} does not exist: accepted an existing results store (pqqp run --suite ...)")
    return path


def suite_inputs(suite: "Suite") -> list[str]:
    """The files a suite reads (its models and corpus, where they are paths): never an output."""
    return [*suite.models, suite.corpus]


def stored_bench(suite: "Suite", store: "Store", args: argparse.Namespace) -> "Bench":
    """A lookup-only bench over the suite's stored measurements: reports and the gate never compute."""
    from .measure import Bench

    return Bench(suite, store, lookup_only=True, progress=False, cache_dir=args.cache_dir)


def command_leaderboard(args: argparse.Namespace) -> int:
    """`pqqp leaderboard`: tables, plots and an index from the store; the command is recorded in the index."""
    from .leaderboard import build
    from .store import Store

    given = [f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(args).items()
             if k in (*SUITE_KEYS, *GRID_FLAGS, "model", "seed") and v is not None]
    command = " ".join(["pqqp leaderboard", f"--suite {args.suite} --store {args.store} --out {args.out}", *given])
    suite = suite_of(args)
    output_folder("--out", args.out)
    with Store(existing_store(args.store)) as store:
        for path in build(stored_bench(suite, store, args), Path(args.out), command):
            print(f"wrote {path}")
    return 0


def command_gate(args: argparse.Namespace) -> int:
    """`pqqp gate`: 1 when a case regressed against the baseline, 0 otherwise (2: bad input)."""
    from .gate import run_gate, with_overrides
    from .store import Store

    suite = with_overrides(suite_of(args),
                           args.rel_tol, args.min_recovery)
    if args.update_baseline:
        output_file("--baseline", args.baseline, [args.store, args.suite, *suite_inputs(suite)])
    with Store(existing_store(args.store)) as store:
        code, text = run_gate(stored_bench(suite, store, args), args.baseline, update=args.update_baseline)
    print(text)
    return code


def command_import(args: argparse.Namespace) -> int:
    from .store import Store

    if same_file(args.file, args.store):
        raise PqqpError(f"measurements file {args.file!r} is the store itself: accepted a `pqqp export --json` file")
    with Store(args.store) as store:
        added, kept = store.import_json(args.file)
    print(f"{added} measurements added to {args.store}, {kept} already stored")
    return 0


def command_export(args: argparse.Namespace) -> int:
    from .store import Store

    if not args.json and not args.csv:
        raise PqqpError("nothing to export: give --json FILE and/or --csv FILE")
    if args.json and args.csv and same_file(args.json, args.csv):
        raise PqqpError(f"--json and --csv name one file {args.json!r}: accepted two different paths")
    for flag, path in (("--json", args.json), ("--csv", args.csv)):
        if path:
            output_file(flag, path, [args.store])
    with Store(existing_store(args.store)) as store:
        for path, write in ((args.json, store.export_json), (args.csv, store.export_csv)):
            if path:
                print(f"{write(path)} measurements written to {path}")
    return 0


def command_run(args: argparse.Namespace) -> int:
    from .experiment import Experiment, check_recipes
    from .spec import parse_recipe
    from .suite import coerce

    if args.ray is not None and not args.suite:
        raise PqqpError("--ray runs a suite's grid: give --suite FILE.yaml with it")
    if args.suite:
        if args.recipe:
            raise PqqpError("give --suite or --recipe, not both: a suite names its own recipes")
        return command_suite(args)
    if not args.recipe and not args.dense:
        raise PqqpError("nothing to run: give --recipe RECIPE (repeatable), --dense, or --suite FILE.yaml")
    recipes = [parse_recipe(text) for text in args.recipe or []]  # fail on a bad recipe before loading anything
    curve_bits = coerce("curve_bits", args.curve_bits or "3,4,5,6,8")
    if any(not 2 <= b <= 16 for b in curve_bits):
        raise PqqpError(f"--curve-bits {args.curve_bits!r} is not accepted: bit widths 2..16, e.g. 3,4,5,6,8")
    if args.both_orders:
        recipes += [r.reversed() for r in recipes if len(r.stages) > 1 and r.reversed() not in recipes]
    if args.dense and all(r.stages for r in recipes):
        recipes.insert(0, parse_recipe("dense"))
    settings = settings_from(args)
    if args.json:
        output_file("--json", args.json, [settings.model, settings.corpus])
    check_recipes(settings, recipes)  # from the model's config: before its weights and the corpus load
    experiment = Experiment(settings)
    s = experiment.settings
    print(f"model {s.model} ({experiment.loaded.source}) on {experiment.device}; corpus {experiment.corpus.name}: "
          f"{experiment.corpus.split}; windows start with "
          f"{'BOS' if experiment.corpus.bos is not None else 'no BOS'} (bos={s.bos}); "
          f"calibration {s.calib_samples} x {s.seqlen} tokens, seed {s.seed}; "
          f"loaded in {experiment.load_seconds:.1f} s")
    results = []
    for recipe in recipes:
        case = experiment.run(recipe)
        print("\n" + describe(case), flush=True)
        results.append(case)
    if args.both_orders:
        for line in order_advantages(experiment, results, curve_bits):
            print(line, flush=True)
    rows = [(c.recipe, c.order or "-", f"{c.report.achieved()['total']:.2f}", f"{c.perplexity.ppl:.4f}",
             c.perplexity.bos, f"{c.seconds['compress']:.1f}", f"{c.seconds['evaluate']:.1f}") for c in results]
    print("\n" + tabulate(rows, headers=["recipe", "order", "C total", "ppl", "window start", "compress s", "eval s"]))
    if args.json:
        payload = {"settings": s.__dict__, "model_fingerprint": experiment.loaded.fingerprint,
                   "results": [c.summary() for c in results]}
        write_text(args.json, json.dumps(payload, indent=1))
    return 0


def at_bits(stage: Any, bits: int) -> Any:
    """A quantizer stage with each of its quantized parts (w, a, kv) at `bits` instead."""
    return type(stage)(**{**stage.values, **{k: bits for k in ("w", "a", "kv") if stage.values.get(k)}})


def order_advantages(experiment: "Experiment", results: list["CaseResult"], curve_bits: tuple[int, ...]) -> list[str]:
    """For each recipe run in both orders (one pruner, one quantizer): A(Q→P) = M(Q→P) − M(P→Q) with M = −ppl, its
    bootstrap standard error over the windows (paired: both orders on the same windows), and x = C*_P − C_Q, the
    pruner's CER read off the quantizer's own curve at `curve_bits` (Def. 3, 4; measured here, as are the pruner
    alone and the curve)."""
    from .hypothesis import cer, metric_from_ppl, paired_bootstrap_advantage
    from .spec import Recipe, parse_recipe

    by_recipe = {c.recipe: c for c in results}
    bits = sorted(set(curve_bits), reverse=True)
    lines = []
    for case in results:
        recipe = parse_recipe(case.recipe)
        twin = by_recipe.get(str(recipe.reversed()))
        if case.order != "Q>P" or twin is None:
            continue
        quant, prune = recipe.methods
        points = [Recipe(recipe.basis + (at_bits(quant, b),)) for b in bits]
        curve = [(point.ratios()["quant"], metric_from_ppl(experiment.run(point).perplexity.ppl)) for point in points]
        c_p = cer(metric_from_ppl(experiment.run(Recipe(recipe.basis + (prune,))).perplexity.ppl), curve)
        c_q = recipe.ratios()["quant"]
        a = paired_bootstrap_advantage(case.perplexity.window_nll, twin.perplexity.window_nll,
                                       case.perplexity.tokens // case.perplexity.windows)
        lines.append(f"A(Q→P) of {prune.canonical()} and {quant.canonical()}: {a.value:+.4f} ± {a.stderr:.4f} "
                     f"(bootstrap over {case.perplexity.windows} windows; > 0: quantizing first wins) at "
                     f"x = C*_P − C_Q = {c_p} − {c_q:.3g} = {c_p.value - c_q:+.3g} (C*_P from {quant.name} at "
                     f"{', '.join(map(str, sorted(bits)))} bits)")
    return lines


def seconds_of(m) -> float:
    took = m.details.get("seconds", {})
    return took.get("compress", 0.0) + took.get("evaluate", 0.0)


def command_order(args: argparse.Namespace) -> int:
    """`pqqp order`: recommend an order of n methods (paper Problem 1, App. D.7) with a predictor (predictors.py):
    by default the intensity rule, increasing CER from the single runs (§3.2); or a probe of the orders on a sample
    of decoder blocks. With --exhaustive, measure every order and report the recommendation's rank and regret."""
    from tqdm.auto import tqdm

    from .analysis import Analysis
    from .measure import Bench
    from .ordering import parse_method_set
    from .spec import parse_recipe
    from .sections.order_search import OrderSearch, OrderSpec, order_evidence, order_outcome
    from .store import Store
    from .suite import Suite, coerce

    methods = parse_method_set(args.methods)  # a bad set or setting fails before anything loads
    if args.probe_blocks < 1:
        raise PqqpError(f"--probe-blocks {args.probe_blocks} is not accepted: a positive number of decoder blocks")
    d = settings_from(args)
    search = OrderSearch((methods,), args.reference, args.predictor, args.probe_blocks)
    suite = Suite(name="order", models=(d.model,), corpus=d.corpus, seqlen=d.seqlen, calib_samples=d.calib_samples,
                  eval_tokens=d.eval_tokens, holdout=d.holdout, bos=d.bos, seeds=(d.seed,), batch_size=d.batch_size,
                  device=d.device, pruners=(), quantizers=(), ratios=(), bits=(),
                  curve_bits=coerce("curve_bits", args.curve_bits), sections=(search,))
    spec = OrderSpec(suite, suite.models[0], methods)
    rule = args.predictor == "intensity"
    curve = list(suite.curve(args.reference).values()) if rule else []
    singles = [methods.single(i) for i in range(len(methods.units))] if rule else []
    orders = [methods.recipe(o) for o in methods.orders()] if args.exhaustive else []
    plan = [parse_recipe("dense"), *curve, *singles, *orders] if rule or orders else []
    needs = (f"{len(singles)} single runs and a {len(curve)}-point {args.reference} curve for the CERs" if rule
             else f"the {args.predictor} predictor, probing {args.probe_blocks} sampled decoder blocks")
    print(f"{len(methods.units)} methods on {spec.model}: {needs}" + (f", then all {len(orders)} orders" if orders else "")
          + f"; store {args.store}", flush=True)
    with Store(args.store) as store:
        bench = Bench(suite, store, refresh=args.refresh, progress=not args.no_progress, cache_dir=args.cache_dir,
                      trust_remote_code=args.trust_remote_code)
        measured = {}
        for recipe in tqdm(plan, desc="measurements", unit="recipe", disable=args.no_progress):
            measured[recipe] = bench.measure(spec.model, recipe)
        analysis = Analysis(bench)
        result, details = order_outcome(analysis, spec, exhaustive=args.exhaustive)
        print("\n" + order_evidence(analysis, spec, result, details))
        parts = []
        if rule:
            parts.append(f"the rule's {len(singles)} single runs took {sum(seconds_of(measured[r]) for r in singles):.0f} s")
        if orders:
            parts.append(f"the {len(orders)} orders took {sum(seconds_of(measured[r]) for r in orders):.0f} s")
        if parts:
            print("measured cost: " + "; ".join(parts) + (f" (the curve, shared by every method set on this model: "
                  f"{sum(seconds_of(measured[r]) for r in curve):.0f} s)" if rule else ""))
    return 0


def command_models(args: argparse.Namespace) -> int:
    from .catalog import available_models

    print(tabulate(available_models(), headers=["name", "status", "model"], maxcolwidths=[None, 50, 40]))
    print("\nAlso accepted: any HF hub id (where the hub or its cache is reachable), a local HF folder, a .gguf file.")
    return 0


def command_corpora(args: argparse.Namespace) -> int:
    from .catalog import available_corpora

    print(tabulate(available_corpora(), headers=["corpus", "status"], maxcolwidths=[None, 90]))
    return 0


def command_methods(args: argparse.Namespace) -> int:
    """`pqqp methods`: the registry's table, cached per method code and plugin set (listing.py)."""
    from .listing import HEADERS, method_listing
    from .paths import default_cache_dir

    table = method_listing(default_cache_dir())
    print(tabulate(table["rows"], headers=HEADERS,
                   maxcolwidths=[None, None, 16, 6, 32, None, 17]))  # 120 columns (wider for a long plugin name)
    for name, why in table["broken"].items():
        print(f"pqqp: plugin method '{name}' failed to load and is left out: {why}", file=sys.stderr)
    return 0


def command_lm_eval(argv: list[str]) -> int:
    """`pqqp lm-eval ...`: lm-eval's own command line with the offline tasks of `suites/tasks` included.

    `--model pqqp` is known to lm-eval once pqqp-bench is installed (`pqqp_bench_lmeval`); `register()` makes sure of
    it in a checkout used without installing. Everything after `lm-eval` goes to lm-eval as given."""
    from .evaluate.lmeval import TASKS_DIR, register

    register()
    from lm_eval.__main__ import cli_evaluate

    include = [] if "--include_path" in argv or not TASKS_DIR.is_dir() or argv[:1] not in (["run"], ["ls"]) \
        else ["--include_path", str(TASKS_DIR)]
    saved = sys.argv
    sys.argv = ["lm-eval", *argv, *include]
    try:
        cli_evaluate()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return 0


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are the harness's one line (`pqqp: error: ...`, exit 2), not usage text and a
    second line; its sub-command parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise PqqpError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pqqp", description="Benchmark the order of pruning and quantization.")
    parser.add_argument("--version", action="version", version=f"pqqp-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="compress with recipes and measure perplexity")
    run.add_argument("--recipe", action="append",
                     help="an ordered recipe, e.g. 'wanda:p=0.3 > rtn:w=4,a=4,kv=4' (repeatable; 'dense' for none)")
    run.add_argument("--suite", help="run a suite's whole grid (e.g. suites/default.yaml) through the results store")
    run.add_argument("--store", default=str(default_store_path()), help="results store of --suite (default $PQQP_STORE or results/pqqp.sqlite)")
    run.add_argument("--refresh", action="store_true", help="with --suite: recompute stored measurements")
    add_grid_arguments(run, "with --suite: override the suite's")
    run.add_argument("--vllm-venv", default=None,
                     help="with --suite: the venv with vLLM for throughput (default $PQQP_VLLM_VENV or ~/.cache/pqqp-bench/venvs/vllm)")
    run.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                     help=f"with --suite: compute the missing cases on Ray workers first, each stored in --store as it "
                          f"finishes (needs pqqp-bench[ray]; workers read the models and corpus by the same paths). "
                          f"ADDRESS: {ADDRESSES}; default local")
    for option in RAY_OPTIONS:
        run.add_argument(option.flag(), type=option.kind, default=option.default, metavar="N",
                         help=f"with --ray: {option.help}")
    run.add_argument("--both-orders", action="store_true",
                     help="also run each multi-stage recipe in reverse order; for one pruner and one quantizer, print "
                          "A(Q→P) with its standard error and x = C*_P − C_Q (measuring the pruner alone and the "
                          "quantizer's curve at --curve-bits, default 3,4,5,6,8)")
    run.add_argument("--dense", action="store_true", help="also measure the dense model")
    run.add_argument("--json", help="write every result to this JSON file")
    add_settings_arguments(run)
    run.set_defaults(func=command_run)
    export = sub.add_parser("export", help="write a results store's measurements to JSON and/or CSV")
    export.add_argument("--store", default=str(default_store_path()), help="the results store (default $PQQP_STORE or results/pqqp.sqlite)")
    export.add_argument("--json", help="write a JSON list here")
    export.add_argument("--csv", help="write a CSV table here")
    export.set_defaults(func=command_export)
    imported = sub.add_parser("import", help="add the measurements of a `pqqp export --json` file (a published "
                                             "leaderboard's data) to a results store")
    imported.add_argument("file", help="the JSON file, e.g. leaderboard/paper-fig3/measurements.json")
    imported.add_argument("--store", default=str(default_store_path()), help="the results store (default $PQQP_STORE or results/pqqp.sqlite)")
    imported.set_defaults(func=command_import)
    board = sub.add_parser("leaderboard", help="write Markdown/HTML tables, PNG plots and an index from the store")
    gate = sub.add_parser("gate", help="compare the store with a baseline: exit 1 when a case regressed")
    for command in (board, gate):
        command.add_argument("--suite", default="suites/default.yaml", help="the suite (default suites/default.yaml)")
        command.add_argument("--store", default=str(default_store_path()),
                             help="the results store (default $PQQP_STORE or results/pqqp.sqlite)")
        command.add_argument("--cache-dir", default=None, help="model cache, for the weights' fingerprints")
        add_suite_overrides(command)
    board.add_argument("--out", default="leaderboard", help="output folder (default leaderboard)")
    board.set_defaults(func=command_leaderboard)
    gate.add_argument("--baseline", required=True, help="baseline JSON, e.g. leaderboard/baseline.json")
    gate.add_argument("--update-baseline", action="store_true", help="write the store's values as the new baseline")
    gate.add_argument("--rel-tol", type=float, default=None,
                      help="allowed relative worsening per case, e.g. 0.02 (default: the suite's gate rule, else 0.02)")
    gate.add_argument("--min-recovery", type=float, default=None,
                      help="fraction of the dense quality a case must keep, e.g. 0.5 (default: the suite's, else off)")
    gate.set_defaults(func=command_gate)
    order = sub.add_parser("order", help="recommend the order of n methods from their single runs (weakest first); "
                                         "--exhaustive also measures all n! orders")
    order.add_argument("--methods", required=True,
                       help="the methods to order, e.g. 'wanda:p=0.3, rtn:w=4,a=4,kv=4, sparsegpt:p=0.1' (', ' or ';' "
                            "between methods; a rotation goes with its quantizer: 'quarot > rtn:w=4')")
    order.add_argument("--exhaustive", action="store_true", help="measure every order: the rank and regret of the recommendation")
    order.add_argument("--predictor", default="intensity", choices=PREDICTORS,
                       help="how the order is predicted: intensity (single runs, increasing CER), probe (every order on "
                            "sampled blocks), pairwise (each pair both ways on sampled blocks), probe-intensity (each "
                            "method alone on sampled blocks, weakest first); default intensity")
    order.add_argument("--probe-blocks", type=int, default=2, help="decoder blocks the probe predictors sample (default 2)")
    order.add_argument("--reference", default="rtn",
                       help="the quantizer whose curve gives the CERs, a template such as rtn or 'quarot > gptq:g=64' "
                            "(default rtn; bits fill w, a and kv)")
    order.add_argument("--curve-bits", default="3,4,5,6,8", help="bit widths of the reference curve (default 3,4,5,6,8)")
    order.add_argument("--store", default=str(default_store_path()),
                       help="results store: measurements are reused and kept (default $PQQP_STORE or results/pqqp.sqlite)")
    order.add_argument("--refresh", action="store_true", help="recompute stored measurements")
    add_settings_arguments(order)
    order.set_defaults(func=command_order)
    sub.add_parser("lm-eval", add_help=False,
                   help="lm-eval's own CLI with the `pqqp` model type: pqqp lm-eval run --model pqqp --model_args "
                        "pretrained=smollm2-135m,recipe=... --tasks pqqp_cloze (suites/tasks is included)")
    for name, func, text in (("models", command_models, "list the embedded models"),
                             ("corpora", command_corpora, "list the corpora and why one is missing"),
                             ("methods", command_methods, "list the compression methods and their parameters")):
        sub.add_parser(name, help=text).set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:  # everything after it is lm-eval's, options included
        try:
            return command_lm_eval(argv[1:])
        except PqqpError as exc:
            print(f"pqqp: error: {exc}", file=sys.stderr)
            return 2
    try:
        args = build_parser().parse_args(argv)
    except PqqpError as exc:
        print(f"pqqp: error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            print(f"pqqp: error: --threads {args.threads} is not accepted: use a positive integer", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    quiet = getattr(args, "no_progress", False)
    if quiet:  # transformers' own weight-loading bars; ours follow Settings.progress
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except PqqpError as exc:
        print(f"pqqp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\npqqp: interrupted: every measurement finished before it is stored; the same command resumes from "
              "them", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a read-only or vanished path: the environment, not a bug
        where = f" {exc.filename}" if exc.filename else ""
        print(f"pqqp: error: cannot write or read{where}: {exc.strerror or exc}; every measurement finished before "
              f"is stored: free space or choose a writable path and run again", file=sys.stderr)
        return 2
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
