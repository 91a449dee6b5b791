"""The llm-compressor half of `vs_llmcompressor.py`: runs inside llm-compressor's own virtualenv.

    <venv>/bin/python benchmarks/llmcompressor_side.py --model FOLDER --data inputs.pt --recipe joint --out r.json

It never imports pqqp_bench (that package needs a transformers release llm-compressor does not accept). It loads
the fp32 model folder, the calibration samples and evaluation windows the driver saved (`inputs.pt`:
{"calibration": [n, seqlen] ids, "windows": [m, seqlen] ids}), runs `oneshot` with the recipe, times the
`oneshot` call only, evaluates token-level perplexity over the non-overlapping windows (exp(total NLL /
predicted tokens), each window predicting its tokens 2..seqlen), counts the zeros of the decoder-block Linear
weights, and writes one JSON object to --out.

Recipes (`--recipe`): dense (no oneshot), sparsegpt, gptq, joint (SparseGPT then GPTQ, one recipe list).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def build_recipe(args: argparse.Namespace) -> list:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    # lm_head is ignored explicitly: SparseGPTModifier's default targets ("Linear") include it, and SmolLM2 ties
    # it to the embeddings. What is left is exactly the Linears of the decoder blocks, as on the pqqp side.
    ignore = ["re:.*lm_head"]
    sparse = SparseGPTModifier(
        sparsity=args.sparsity, mask_structure="0:0", block_size=args.block, dampening_frac=args.damp,
        targets=["Linear"], ignore=ignore,
    )
    weights = QuantizationArgs(num_bits=args.bits, type="int", symmetric=True, strategy="group", group_size=args.group,
                               dynamic=False, observer=args.observer)
    gptq_kwargs = {} if args.actorder == "default" else {"actorder": None if args.actorder == "none" else args.actorder}
    gptq = GPTQModifier(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
        targets=["Linear"], ignore=ignore, block_size=args.block, dampening_frac=args.damp, **gptq_kwargs,
    )
    return {"sparsegpt": [sparse], "gptq": [gptq], "joint": [sparse, gptq]}[args.recipe]


def decoder_linears(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}


def weight_census(model: torch.nn.Module, group: int) -> dict:
    """Zeros of the decoder Linear weights, and the most distinct values any group of `group` inputs holds."""
    zeros = total = 0
    levels = 0
    for linear in decoder_linears(model).values():
        weight = linear.weight.detach().float()
        zeros += int((weight == 0).sum())
        total += weight.numel()
        rows, cols = weight.shape
        if cols % group == 0:
            ordered = weight.reshape(rows, cols // group, group).sort(dim=-1).values
            levels = max(levels, int(((ordered[..., 1:] != ordered[..., :-1]).sum(dim=-1) + 1).max()))
    return {"zeros": zeros, "numel": total, "zero_fraction": zeros / total, "max_levels_per_group": levels}


@torch.inference_mode()
def perplexity(model: torch.nn.Module, windows: torch.Tensor) -> dict:
    start = time.perf_counter()
    total = 0.0
    for window in windows:
        batch = window.unsqueeze(0)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        targets = batch[:, 1:]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
    n, seqlen = windows.shape
    tokens = n * (seqlen - 1)
    return {"ppl": math.exp(total / tokens), "nll_sum": total, "tokens": tokens, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="fp32 HF model folder")
    parser.add_argument("--data", required=True, help=".pt file with calibration and windows")
    parser.add_argument("--recipe", required=True, choices=["dense", "sparsegpt", "gptq", "joint"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--actorder", default="default", help="default (llm-compressor's: static), static, weight, none")
    parser.add_argument("--observer", default=None, help="weight observer (default: llm-compressor's, memoryless minmax)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = torch.load(args.data)
    calibration, windows = data["calibration"].long(), data["windows"].long()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    model.config.use_cache = False
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    embed_before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    result: dict = {"side": "llm-compressor", "recipe": args.recipe, "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "attn_implementation": model.config._attn_implementation,
                    "calibration": list(calibration.shape), "windows": list(windows.shape)}

    if args.recipe != "dense":
        import llmcompressor
        from datasets import Dataset
        from llmcompressor import oneshot

        result["llmcompressor"] = llmcompressor.__version__
        dataset = Dataset.from_dict({"input_ids": calibration.tolist(),
                                     "attention_mask": torch.ones_like(calibration).tolist()})
        recipe = build_recipe(args)
        result["modifiers"] = [repr(m) for m in recipe]
        start = time.perf_counter()
        oneshot(
            model=model, tokenizer=tokenizer, dataset=dataset, recipe=recipe,
            num_calibration_samples=calibration.shape[0], max_seq_length=calibration.shape[1],
            shuffle_calibration_samples=False, batch_size=1,
        )
        result["compress_seconds"] = time.perf_counter() - start
        gptq = [m for m in recipe if type(m).__name__ == "GPTQModifier"]
        if gptq:
            weights = gptq[0].resolve_quantization_config().config_groups["group_0"].weights
            result["resolved_weight_args"] = weights.model_dump(mode="json")

    result["census"] = weight_census(model, args.group)
    result["embedding_unchanged"] = bool(torch.equal(model.get_input_embeddings().weight.detach(), embed_before))
    result["lm_head_unchanged"] = bool(torch.equal(model.get_output_embeddings().weight.detach(), head_before))
    result["perplexity"] = perplexity(model, windows)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps({k: result[k] for k in ("recipe", "compress_seconds", "census", "perplexity") if k in result}))


if __name__ == "__main__":
    main()
