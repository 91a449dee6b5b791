"""pqqp-bench: a benchmark harness for the order of pruning and quantization.

Data flows one way: spec -> model + data -> compress -> evaluate -> store -> hypothesis -> report.
"""

__version__ = "0.1.0"
