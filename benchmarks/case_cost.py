"""What one grid case costs: model load, compression and evaluation seconds, and peak GPU memory.

    python benchmarks/case_cost.py [--model smollm2-135m] [--recipes "dense; wanda:p=0.5; sparsegpt:p=0.5 > gptq:w=4"]
                                   [--calib-samples 32] [--seqlen 512] [--eval-tokens 16384] [--device auto]
                                   [--offload none] [--json costs.json]
    python benchmarks/case_cost.py --random llama-3-8b --dtype bfloat16 ...   # the shape of Llama-3-8B, random weights

These figures feed the arithmetic of docs/scaling.md. Each recipe runs once through `Experiment.run` (a fresh
copy of the loaded model, compressed, then perplexity), as a grid case does. `--random NAME` writes a model of
a known architecture with random weights (normal, std 0.02) to a temporary folder first, for machines that
cannot download it: the costs are those of the real shape (the same operations on tensors of the same sizes),
the perplexities are meaningless and are printed only as a check that the run finished. The tokenizer is the
embedded model's (its ids are a subset of any larger vocabulary).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from tabulate import tabulate
from transformers import AutoTokenizer, LlamaConfig

from pqqp_bench.experiment import Experiment, Settings
from pqqp_bench.models import resolve
from pqqp_bench.paths import default_cache_dir

SHAPES = {  # published configurations, written out so that nothing is downloaded
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                         tie_word_embeddings=True, rms_norm_eps=1e-5),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                       tie_word_embeddings=False, rms_norm_eps=1e-5),
}


def random_model_folder(name: str, folder: Path, dtype: torch.dtype, tokenizer: str, layers: int | None = None) -> Path:
    """A Llama-architecture folder with the shape `SHAPES[name]` and random weights, tensor by tensor (the
    whole model is never in memory at once), plus the tokenizer of `tokenizer` (a folder or model name).
    `layers` keeps only that many decoder blocks (each block's cost is that of the full model's blocks)."""
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    shape = SHAPES[name] | ({"num_hidden_layers": layers} if layers else {})
    config = LlamaConfig(**shape, torch_dtype=str(dtype).removeprefix("torch."))
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    make = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(make).manual_seed(0)
    shard, count, index, size = {}, 0, {}, 0
    for tensor_name, param in skeleton.state_dict().items():
        if tensor_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if tensor_name.endswith("norm.weight"):
            value = torch.ones(param.shape, dtype=dtype)
        else:
            value = (torch.randn(param.shape, generator=gen, device=make, dtype=torch.float32) * 0.02).to(dtype).cpu()
        shard[tensor_name] = value
        size += value.numel() * value.element_size()
        if size > 4 << 30:
            count = flush(folder, shard, count, index)
            shard, size = {}, 0
    flush(folder, shard, count, index)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    return folder


def flush(folder: Path, shard: dict, count: int, index: dict) -> int:
    from safetensors.torch import save_file

    name = f"model-{count:05d}.safetensors"
    save_file(shard, folder / name)
    index.update({k: name for k in shard})
    return count + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="embedded name, HF id or folder (default smollm2-135m)")
    parser.add_argument("--random", choices=sorted(SHAPES), help="a model of this shape with random weights instead")
    parser.add_argument("--layers", type=int, default=None,
                        help="--random: keep only this many decoder blocks (per-block costs of the full shape, for "
                             "methods too slow to run on all of them; default: all)")
    parser.add_argument("--dtype", default="float32", help="weights of --random on disk: float32 or bfloat16")
    parser.add_argument("--tokenizer", default=None,
                        help="--random: a folder with the tokenizer to use (default: the embedded model's)")
    parser.add_argument("--recipes", default="dense; wanda:p=0.5; sparsegpt:p=0.5; gptq:w=4,g=128; "
                                             "sparsegpt:p=0.5 > gptq:w=4,g=128",
                        help="';'-separated recipes; 'RECIPE@N' runs it with N calibration samples")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--offload", default="none", choices=("none", "cpu", "disk"))
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pqqp-random-") as tmp:
        model = args.model
        if args.random:
            start = time.perf_counter()
            tokenizer = args.tokenizer or resolve("smollm2-135m", default_cache_dir())[0]
            model = str(random_model_folder(args.random, Path(tmp), getattr(torch, args.dtype), tokenizer,
                                                args.layers))
            print(f"random {args.random} ({args.dtype}) written in {time.perf_counter() - start:.1f} s", flush=True)
        settings = Settings(model=model, seqlen=args.seqlen, calib_samples=args.calib_samples,
                            eval_tokens=args.eval_tokens, device=args.device, offload=args.offload, progress=False)
        experiment = Experiment(settings)
        params = sum(p.numel() for p in experiment.loaded.model.parameters())
        print(f"{args.random or args.model}: {params / 1e9:.3f} B parameters, loaded in {experiment.load_seconds:.1f} s "
              f"on {experiment.device} (offload {args.offload})", flush=True)
        rows = []
        for item in [r.strip() for r in args.recipes.split(";") if r.strip()]:
            recipe, _, calib = item.partition("@")
            experiment.settings = replace(settings, calib_samples=int(calib or args.calib_samples))
            experiment.calibrations = {}  # drawn again at this size
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            case = experiment.run(recipe.strip())
            wall = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
            got = case.report.achieved()
            rows.append({"recipe": recipe.strip(), "calib": experiment.settings.calib_samples,
                         "compress_s": case.seconds["compress"], "evaluate_s": case.seconds["evaluate"], "wall_s": wall,
                         "peak_gpu_gib": peak, "sparsity": got["sparsity"], "w_bits": got["w_bits"], "ppl": case.perplexity.ppl})
            print(f"  {item}: compress {case.seconds['compress']:.1f} s, evaluate {case.seconds['evaluate']:.1f} s, "
                  f"wall {wall:.1f} s, peak GPU {peak:.1f} GiB, sparsity {got['sparsity']:.3f}, W{got['w_bits']}, "
                  f"ppl {case.perplexity.ppl:.4g}", flush=True)
    print(tabulate(rows, headers="keys", floatfmt=".2f"))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.random or args.model, "layers": experiment.loaded.model.config.num_hidden_layers,
            "random_weights": bool(args.random), "parameters": params,
            "device": experiment.device, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "settings": vars(args), "load_s": experiment.load_seconds, "cases": rows}, indent=1))


if __name__ == "__main__":
    main()
