"""Measurements of a (compressed) model: perplexity here; lm-eval tasks and throughput join later."""

from .perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
