"""pqqp-bench's SparseGPT and GPTQ side by side with llm-compressor's (SparseGPTModifier, GPTQModifier, oneshot).

    python benchmarks/vs_llmcompressor.py [--calib-samples 32] [--seqlen 512] [--eval-windows 16] [--threads 1]

Both sides get identical inputs: the same fp32 model folder (the embedded model's cached safetensors folder,
or --model), the same calibration samples and the same evaluation windows (drawn once here by
`pqqp_bench.experiment.Experiment` and saved to a .pt file the other side loads), and the same perplexity
convention (token-level, non-overlapping windows of `seqlen`: exp(total NLL / predicted tokens)).

llm-compressor pins its own transformers range, so it runs in its own virtualenv, outside the repository
(default `~/.cache/pqqp-bench/venvs/llmcompressor`, created on first use: `python3 -m venv`, then
`pip install torch==2.13.0` first so pip keeps the local CPU wheel, then `pip install llmcompressor==<pin>`).
Its half is `benchmarks/llmcompressor_side.py`, which does not import pqqp_bench.

Every measurement runs in a fresh process, one at a time, alternating per recipe: our like-for-like run, then
llm-compressor's run, then our other variants. The time is the `compress()` call only (ours) and the `oneshot()`
call only (theirs); model loading and evaluation are not timed. Zeros are counted in the decoder-block Linear
weights (the set both sides compress; lm_head and embeddings stay dense on both).

Rows (p, bits, group, block size and dampening are settable; defaults p=0.5, int4 symmetric, group 64,
block 128, dampening 0.01):
  sparsegpt   ours `sparsegpt:p=0.5`                  theirs SparseGPTModifier(sparsity=0.5, mask 0:0)
  gptq        ours three variants                     theirs GPTQModifier(int4 sym, strategy group 64; its
                                                      defaults: actorder static, memoryless minmax observer)
              "matched": actorder=true (static groups fitted up front, columns by decreasing diag H, as
                         llm-compressor's actorder=static), grid=full and clip=none: scale 2*absmax/15 on
                         levels -8..7, compressed-tensors' min-max grid bit for bit (tests/test_grids.py;
                         clip=14/15 on our restricted grid differs from it by one ulp in many groups)
              "clip=none": our default dynamic groups, scale absmax/7
              "default": our defaults (dynamic groups, MSE-searched clip)
  joint       SparseGPT then GPTQ, the same three GPTQ variants; theirs both modifiers in one recipe list
Targets (issue): ppl ours / theirs <= 1.01 and time ours / theirs <= 1.0.

Threads: both sides run with the same torch thread count (--threads, default 1, also OMP/MKL_NUM_THREADS). On a
shared 2-core machine, 2 threads made both sides' column sweeps (many small ops) 4-40x slower than 1 thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIDE_SCRIPT = HERE / "llmcompressor_side.py"
LLMCOMPRESSOR_VERSION = "0.14.0.1"  # newest on PyPI when written; needs transformers >=5.15,<=5.17, torch <=2.14
TORCH_VERSION = "2.13.0"  # the local CPU wheel; an unpinned torch would pull the CUDA wheels
DEFAULT_VENV = Path(os.environ.get("PQQP_LLMCOMPRESSOR_VENV", "~/.cache/pqqp-bench/venvs/llmcompressor")).expanduser()
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------------------------
# llm-compressor's virtualenv


def ensure_venv(venv: Path, version: str) -> Path:
    """The venv's python, creating the venv and installing llm-compressor into it on first use."""
    python = venv / "bin" / "python"
    marker = venv / ".pqqp-bench-ready"
    if marker.exists() and marker.read_text().strip() == version and python.exists():
        return python
    log(f"creating llm-compressor {version} virtualenv at {venv}")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install"]
    subprocess.run(pip + [f"torch=={TORCH_VERSION}"], check=True)  # first: the local CPU wheel, no CUDA
    subprocess.run(pip + [f"llmcompressor=={version}", f"torch=={TORCH_VERSION}"], check=True)
    subprocess.run([str(python), "-c", "import llmcompressor, transformers, torch; "
                    "print('llmcompressor', llmcompressor.__version__, 'transformers', transformers.__version__, "
                    "'torch', torch.__version__)"], check=True, env={**os.environ, **OFFLINE})
    marker.write_text(version)
    return python


def venv_versions(python: Path) -> dict:
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "('llmcompressor', 'compressed-tensors', 'transformers', 'torch', 'datasets')}))")
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------------
# our side (a worker process of this script)


def run_ours_worker(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    from pqqp_bench.compress import compress
    from pqqp_bench.evaluate import perplexity
    from pqqp_bench.models import load_model
    from pqqp_bench.spec import parse_recipe

    sys.path.insert(0, str(HERE))
    from llmcompressor_side import weight_census

    data = torch.load(args.data)
    calibration, windows = data["calibration"].long(), data["windows"].long()
    loaded = load_model(args.model)  # a local folder: loaded as is, fp32
    model = loaded.model
    embed_before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    recipe = parse_recipe(args.worker_recipe)
    result: dict = {"side": "pqqp-bench", "recipe": str(recipe), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "attn_implementation": model.config._attn_implementation,
                    "calibration": list(calibration.shape), "windows": list(windows.shape)}
    if recipe.stages:
        torch.manual_seed(0)
        start = time.perf_counter()
        report = compress(model, recipe, calibration, device="cpu", seed=0, progress=False)
        result["compress_seconds"] = time.perf_counter() - start
        result["achieved"] = report.achieved()
        result["stage_seconds"] = report.seconds
    result["census"] = weight_census(model, args.group)
    result["embedding_unchanged"] = bool(torch.equal(model.get_input_embeddings().weight.detach(), embed_before))
    result["lm_head_unchanged"] = bool(torch.equal(model.get_output_embeddings().weight.detach(), head_before))
    ppl = perplexity(model, windows, batch_size=1, progress=False)
    result["perplexity"] = {"ppl": ppl.ppl, "nll_sum": sum(ppl.window_nll), "tokens": ppl.tokens, "seconds": ppl.seconds}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("recipe", "compress_seconds", "census", "perplexity") if k in result}))


# --------------------------------------------------------------------------------------------------------------
# the driver


def recipes(args: argparse.Namespace) -> dict[str, dict]:
    """Per row group: the llm-compressor recipe name and our variants (label -> pqqp recipe), matched one first."""
    prune = f"sparsegpt:p={args.sparsity},block={args.block},damp={args.damp}"
    base = f"gptq:w={args.bits},g={args.group},block={args.block},damp={args.damp}"
    gptq = {  # grid=full,clip=none: compressed-tensors' scale absmax / ((2^B - 1) / 2), bit for bit
        "matched (actorder, grid=full, clip=none)": f"{base},actorder=true,grid=full,clip=none",
        "clip=none": f"{base},clip=none",
        "default (clip=mse)": base,
    }
    rows = {
        "dense": {"theirs": "dense", "ours": {"": "dense"}},
        "sparsegpt": {"theirs": "sparsegpt", "ours": {"": prune}},
        "gptq": {"theirs": "gptq", "ours": gptq},
        "joint": {"theirs": "joint", "ours": {label: f"{prune} > {r}" for label, r in gptq.items()}},
    }
    chosen = {}
    for name in args.recipes.split(","):
        if name not in rows:
            raise SystemExit(f"unknown recipe group {name!r}: accepted {', '.join(rows)}")
        entry = dict(rows[name])
        if args.variants != "all" and len(entry["ours"]) > 1:
            keep = set(args.variants.split(","))
            entry["ours"] = {k: v for k, v in entry["ours"].items() if k.split(" ")[0] in keep}
        chosen[name] = entry
    return chosen


def run_process(command: list[str], logfile: Path, threads: int, timeout: float) -> None:
    env = {**os.environ, **OFFLINE}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(logfile, "w") as handle:
        proc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = "".join(logfile.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{command[0]} ... exited {proc.returncode}; last lines of {logfile}:\n{tail}")


def ours(args, workdir: Path, data: Path, folder: str, recipe: str, tag: str) -> dict:
    out = workdir / f"ours-{tag}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker-recipe", recipe, "--model", folder,
               "--data", str(data), "--out", str(out), "--threads", str(args.threads), "--group", str(args.group)]
    run_process(command, workdir / f"ours-{tag}.log", args.threads, args.timeout)
    return json.loads(out.read_text())


def theirs(args, python: Path, workdir: Path, data: Path, folder: str, recipe: str, seed: int) -> dict:
    out = workdir / f"theirs-{recipe}-seed{seed}.json"
    command = [str(python), str(SIDE_SCRIPT), "--model", folder, "--data", str(data), "--recipe", recipe,
               "--out", str(out), "--threads", str(args.threads), "--sparsity", str(args.sparsity),
               "--bits", str(args.bits), "--group", str(args.group), "--block", str(args.block),
               "--damp", str(args.damp), "--actorder", args.actorder]
    run_process(command, workdir / f"theirs-{recipe}-seed{seed}.log", args.threads, args.timeout)
    return json.loads(out.read_text())


def prepare_inputs(args: argparse.Namespace, seed: int, workdir: Path) -> tuple[Path, str]:
    """Draw the calibration samples (by `seed`) and evaluation windows once; save them for both sides."""
    import torch

    from pqqp_bench.experiment import Experiment, Settings

    settings = Settings(model=args.model, corpus=args.corpus, seqlen=args.seqlen, calib_samples=args.calib_samples,
                        eval_tokens=args.eval_windows * args.seqlen, seed=seed, device="cpu", progress=False)
    experiment = Experiment(settings)
    folder = experiment.loaded.model.name_or_path
    if not Path(folder, "config.json").exists():
        raise SystemExit(f"model {args.model!r} is not a local folder ({folder}): both sides need the same local folder")
    data = workdir / f"inputs-seed{seed}.pt"
    torch.save({"calibration": experiment.calibration.clone(), "windows": experiment.windows.clone()}, data)
    log(f"inputs: model folder {folder}; calibration {list(experiment.calibration.shape)}, "
        f"windows {list(experiment.windows.shape)} ({args.corpus}, seed {seed}) -> {data}")
    return data, folder


def seconds(result: dict) -> float | None:
    return result.get("compress_seconds")


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)


def table(rows: list[dict]) -> str:
    """One row per recipe; over several seeds: geometric-mean perplexity, mean time and zeros."""
    from tabulate import tabulate

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    body = []
    for row in rows:
        po = geomean([r["perplexity"]["ppl"] for r in row["ours"]])
        pt = geomean([r["perplexity"]["ppl"] for r in row["theirs"]])
        so, st = mean([seconds(r) for r in row["ours"]]), mean([seconds(r) for r in row["theirs"]])
        zo = mean([r["census"]["zero_fraction"] for r in row["ours"]])
        zt = mean([r["census"]["zero_fraction"] for r in row["theirs"]])
        body.append([row["label"], f"{po:.4f}", f"{pt:.4f}", f"{po / pt:.4f}", fmt(so, ".1f"), fmt(st, ".1f"),
                     fmt(so / st if so is not None and st else None, ".3f"), f"{100 * zo:.2f}%", f"{100 * zt:.2f}%"])
    headers = ["recipe", "ppl ours", "ppl theirs", "ppl ratio", "time ours s", "time theirs s", "time ratio",
               "zeros ours", "zeros theirs"]
    return tabulate(body, headers=headers, disable_numparse=True)


def per_seed_table(rows: list[dict], seeds: list[int]) -> str:
    from tabulate import tabulate

    body = [[row["label"]] + [f"{o['perplexity']['ppl']:.3f} / {t['perplexity']['ppl']:.3f}"
                              for o, t in zip(row["ours"], row["theirs"])] for row in rows]
    return tabulate(body, headers=["recipe"] + [f"seed {s}: ppl ours / theirs" for s in seeds], disable_numparse=True)


def provenance() -> str:
    """The pqqp_bench commit and whether the package differs from it (others may edit it during a run)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pqqp_bench"], cwd=HERE.parent,
                               capture_output=True, text=True).stdout
        return f"pqqp_bench at {head.strip() or '?'}{' + local changes' if dirty.strip() else ''}"
    except OSError:
        return "pqqp_bench commit unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="pqqp model name or local folder (both sides load it)")
    parser.add_argument("--corpus", default="pydoc")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=16, help="evaluation windows of seqlen tokens")
    parser.add_argument("--seeds", default="0", help="comma list of calibration-sampling seeds; the table averages")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides (0: torch's default)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--actorder", default="default", help="llm-compressor's GPTQ actorder (default: its own, static)")
    parser.add_argument("--recipes", default="dense,sparsegpt,gptq,joint", help="comma list of dense,sparsegpt,gptq,joint")
    parser.add_argument("--variants", default="all", help="our GPTQ variants: all, or a comma list of "
                        "matched,clip=none,default")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--llmcompressor-version", default=LLMCOMPRESSOR_VERSION)
    parser.add_argument("--workdir", type=Path, default=None, help="inputs, logs and per-run JSON (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write every run's result here")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    # worker mode (internal): run one of our recipes and write its JSON
    parser.add_argument("--worker-recipe", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_recipe is not None:
        run_ours_worker(args)
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pqqp-vs-llmcompressor-"))
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    plan = recipes(args)
    python = ensure_venv(args.venv.expanduser(), args.llmcompressor_version)
    versions = venv_versions(python)
    log(f"llm-compressor venv {args.venv}: {versions}; {provenance()}")

    rows: dict[str, dict] = {}
    load = [os.getloadavg()[0]]
    for seed in seeds:
        data, folder = prepare_inputs(args, seed, workdir)
        for name, entry in plan.items():
            their_result = None
            for index, (label, recipe) in enumerate(entry["ours"].items()):
                tag = f"{name}-{index}-seed{seed}"
                log(f"ours   {recipe}")
                our_result = ours(args, workdir, data, folder, recipe, tag)
                log(f"       ppl {our_result['perplexity']['ppl']:.4f}, compress {seconds(our_result) or 0:.1f} s, "
                    f"zeros {our_result['census']['zero_fraction']:.4f}, load {os.getloadavg()[0]:.1f}")
                if their_result is None:  # right after our first (like-for-like) variant: alternate
                    log(f"theirs {entry['theirs']}")
                    their_result = theirs(args, python, workdir, data, folder, entry["theirs"], seed)
                    log(f"       ppl {their_result['perplexity']['ppl']:.4f}, oneshot {seconds(their_result) or 0:.1f} s,"
                        f" zeros {their_result['census']['zero_fraction']:.4f}, load {os.getloadavg()[0]:.1f}")
                row = rows.setdefault(f"{name} {label}".strip(), {"label": f"{name} {label}".strip(), "recipe": recipe,
                                                                   "ours": [], "theirs": []})
                row["ours"].append(our_result)
                row["theirs"].append(their_result)
                load.append(os.getloadavg()[0])

    import torch
    import transformers

    print()
    print(f"pqqp-bench (transformers {transformers.__version__}, torch {torch.__version__}; {provenance()}) vs "
          f"llm-compressor {versions['llmcompressor']} (compressed-tensors {versions['compressed-tensors']}, "
          f"transformers {versions['transformers']}, torch {versions['torch']}); model folder {folder}")
    print(f"calibration {args.calib_samples} x {args.seqlen} (seeds {args.seeds}), evaluation {args.eval_windows} x "
          f"{args.seqlen} tokens ({args.corpus}); {args.threads or 'default'} torch thread(s) per side; each run its own "
          f"process, alternating ours/theirs per recipe; 1-minute load average {min(load):.1f}..{max(load):.1f}")
    print(table(list(rows.values())))
    print("ppl ratio = ours / theirs (target <= 1.01); time ratio = ours compress() / their oneshot() (target <= 1.0); "
          "zeros = zero fraction of the decoder Linear weights" + ("; over seeds: geometric-mean ppl, mean time and "
                                                                   "zeros" if len(seeds) > 1 else ""))
    if len(seeds) > 1:
        print(per_seed_table(list(rows.values()), seeds))
    for row in rows.values():
        for side in ("ours", "theirs"):
            if not all(r["embedding_unchanged"] and r["lm_head_unchanged"] for r in row[side]):
                print(f"warning: {row['label']} {side}: embeddings/lm_head changed")
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "settings": {k: str(v) for k, v in vars(args).items()},
                                         "rows": list(rows.values())}, indent=1))
        log(f"results -> {args.json}")
    log(f"logs and per-run JSON in {workdir}")


if __name__ == "__main__":
    main()
