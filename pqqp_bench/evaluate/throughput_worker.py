"""Offline vLLM throughput of one exported checkpoint: what `vllm bench throughput` measures, as a JSON line.

Run in the Python that has vLLM (the harness starts it as a subprocess, `throughput.py`):

    python throughput_worker.py --model FOLDER --prompt-len 128 --output-len 128 --num-prompts 32 --seed 0

Like `vllm bench throughput` (its `random` dataset, fixed lengths): `num_prompts` prompts of `prompt_len` random
token ids (seeded), `SamplingParams(n=1, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=output_len)`,
one `LLM.generate` call timed from submission to the last output, tokens counted from the outputs, no warm-up.
The kernels vLLM chose are in its own log (`Selected <kernel> for <scheme>`), which the harness reads from
this process's output. The file imports nothing of the harness, so it runs in any environment with vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

RESULT_PREFIX = "pqqp-throughput: "


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an exported checkpoint folder")
    parser.add_argument("--prompt-len", type=int, required=True)
    parser.add_argument("--output-len", type=int, required=True)
    parser.add_argument("--num-prompts", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--enforce-eager", action="store_true", help="no graph compilation: a faster start")
    return parser.parse_args(argv)


def random_prompts(vocab_size: int, specials: set[int], prompt_len: int, num_prompts: int, seed: int) -> list[list[int]]:
    """`num_prompts` lists of `prompt_len` token ids drawn uniformly from the vocabulary, special tokens left out."""
    rng = random.Random(seed)
    ordinary = [t for t in range(vocab_size) if t not in specials]
    return [[rng.choice(ordinary) for _ in range(prompt_len)] for _ in range(num_prompts)]


def measure(args: argparse.Namespace) -> dict:
    from vllm import LLM, SamplingParams, __version__
    from vllm.inputs import TokensPrompt

    llm = LLM(model=args.model, tokenizer=args.model, dtype=args.dtype, seed=args.seed,
              max_model_len=args.max_model_len, enforce_eager=args.enforce_eager)
    tokenizer = llm.get_tokenizer()
    prompts = random_prompts(len(tokenizer), set(tokenizer.all_special_ids), args.prompt_len, args.num_prompts,
                             args.seed)
    params = SamplingParams(n=1, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=args.output_len)
    start = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    prompt_tokens = sum(len(o.prompt_token_ids or ()) for o in outputs)
    output_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    config = llm.llm_engine.model_config
    return {
        "backend": "vllm", "version": __version__, "elapsed": elapsed, "requests": len(outputs),
        "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
        "tokens_per_s": (prompt_tokens + output_tokens) / elapsed, "output_tokens_per_s": output_tokens / elapsed,
        "quantization": config.quantization or "none", "dtype": str(config.dtype).removeprefix("torch."),
        "device": os.environ.get("VLLM_TARGET_DEVICE", ""),
    }


def main(argv: list[str] | None = None) -> int:
    result = measure(arguments(argv))
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # vLLM starts its engine processes by spawn: the guard keeps them from re-running this
    sys.exit(main())
