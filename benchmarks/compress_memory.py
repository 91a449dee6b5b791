"""Peak resident memory while compressing the embedded model, as a multiple of its fp32 size.

    python benchmarks/compress_memory.py [--recipe "sparsegpt:p=0.5 > gptq:w=4"] [--calib-samples 32]

The model is compressed in place (no dense copy kept), block by block, as `compress` does for any model. A
thread samples this process's RSS every 10 ms (psutil); the figures printed are the peak RSS, the RSS with
the model and calibration data loaded just before compressing, and the peak growth during compression, each
divided by the fp32 model size; and the RSS of the runtime alone (python, torch, transformers imported, no
model), so that the peak minus it shows the model plus the compression working set. Target: peak during
compression <= 2.0x the model size. glibc's allocator keeps freed blocks mapped, so the RSS peak also holds
fragments of earlier blocks' temporaries; `MALLOC_MMAP_THRESHOLD_=131072` returns large ones to the system.
"""

from __future__ import annotations

import argparse
import threading
import time

import psutil
import torch

from pqqp_bench.compress import compress
from pqqp_bench.data import load_corpus
from pqqp_bench.models import load_model
from pqqp_bench.spec import parse_recipe


class PeakRSS:
    def __init__(self) -> None:
        self.process, self.peak, self.running = psutil.Process(), 0, True
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> "PeakRSS":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--recipe", default="sparsegpt:p=0.5 > gptq:w=4")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    args = parser.parse_args()

    runtime = psutil.Process().memory_info().rss  # python, torch and transformers, before any model
    loaded = load_model(args.model)
    calibration = load_corpus("pydoc", loaded.tokenizer).calibration_samples(args.calib_samples, args.seqlen, 0)
    size = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    with PeakRSS() as peak:
        report = compress(loaded.model, parse_recipe(args.recipe), calibration, progress=False)
    seconds = time.perf_counter() - start
    mib = 2**20
    print(f"{args.model}: fp32 parameters {size / mib:.0f} MiB; recipe {args.recipe}; calibration "
          f"{args.calib_samples} x {args.seqlen}; {torch.get_num_threads()} threads; {seconds:.0f} s")
    print(f"RSS before compressing (python, torch, model, data): {before / mib:7.0f} MiB = {before / size:.2f}x model")
    print(f"peak RSS while compressing                        : {peak.peak / mib:7.0f} MiB = {peak.peak / size:.2f}x model")
    print(f"peak growth during compression                    : {(peak.peak - before) / mib:7.0f} MiB = "
          f"{(peak.peak - before) / size:.2f}x model")
    print(f"runtime alone (python, torch, transformers)       : {runtime / mib:7.0f} MiB = {runtime / size:.2f}x model")
    print(f"peak minus the runtime (model + working set)      : {(peak.peak - runtime) / mib:7.0f} MiB = "
          f"{(peak.peak - runtime) / size:.2f}x model")
    print(f"achieved: {report.achieved()}")


if __name__ == "__main__":
    main()
