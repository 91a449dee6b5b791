"""Measurements of a (compressed) model: perplexity here; lm-eval tasks and throughput join later."""

from .perplexity import PerplexityResult, layerwise_perplexity, perplexity

__all__ = ["PerplexityResult", "layerwise_perplexity", "perplexity"]
