"""optimum-quanto's quantization as a pqqp-bench method (`quanto`), registered through the entry-point group
`pqqp_bench.methods`."""

from .method import Quanto

__all__ = ["Quanto"]
