"""SLEB: remove whole decoder blocks, chosen greedily by calibration perplexity (Song et al. 2024,
"SLEB: Streamlining LLMs through Redundancy Verification and Elimination of Transformer Blocks", Alg. 1).

Each round scores every block still in the model by the calibration perplexity of the current model without
that block (blocks removed in earlier rounds stay removed) and removes the block with the lowest perplexity,
until the requested number of blocks is gone. The greedy re-scoring after every removal is the paper's
redundancy *verification*: a block judged redundant before may stop being so once its neighbour is gone.

Removing block j leaves the hidden states before j unchanged, so one round walks the kept blocks once,
holding the input of block j for the current model, and scores candidate j from that input (skip j, run the
blocks after it, final norm, lm_head): a round costs about n^2/2 block calls instead of n full forwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..blocks import block_call_kwargs, capture_block_inputs, decoder_blocks, run_block
from ..errors import PqqpError
from .base import Method, Param, positive_int, ratio_in_unit

ORIGIN = "pqqp_original_blocks"  # config attribute: original index of each current block (saved with the config)



@dataclass(frozen=True)
class OutputHead:
    """The part of a causal LM after its last block: final norm, lm_head, optional logit soft-capping."""

    norm: nn.Module
    lm_head: nn.Module
    softcap: float | None

    @classmethod
    def of(cls, model: nn.Module) -> OutputHead:
        norm = getattr(model.get_decoder(), "norm", None)
        lm_head = model.get_output_embeddings()
        if not isinstance(norm, nn.Module) or lm_head is None:
            raise PqqpError(f"sleb cannot find the final norm and lm_head of {type(model).__name__}: "
                            "accepted decoder-only HF models with `model.norm` and an output embedding")
        return cls(norm, lm_head, getattr(model.config, "final_logit_softcapping", None))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.norm(hidden)).float()
        return logits if self.softcap is None else torch.tanh(logits / self.softcap) * self.softcap

    def nll(self, hidden: list[torch.Tensor], samples: torch.Tensor) -> float:
        """Mean next-token negative log-likelihood over the samples: the log of the calibration perplexity."""
        total = sum(F.cross_entropy(self.logits(h)[0, :-1], s[1:], reduction="sum").item()
                    for h, s in zip(hidden, samples))
        return total / (samples.shape[0] * (samples.shape[1] - 1))

    def candidates(self, hidden: list[torch.Tensor], samples: torch.Tensor, top: int) -> list[torch.Tensor]:
        """Per sample, the vocabulary ids the bounds of `lower_bound` sum over: every token that is a target, and
        the `top` most likely next tokens at each position under the model whose final hidden states are `hidden`."""
        ids = []
        for h, s in zip(hidden, samples):
            likely = self.logits(h)[0, :-1].topk(top, dim=-1).indices.reshape(-1)
            ids.append(torch.unique(torch.cat([likely, s[1:]])))
        return ids

    def lower_bound(self, hidden: list[torch.Tensor], samples: torch.Tensor, ids: list[torch.Tensor]) -> float:
        """A lower bound of `nll(hidden, samples)` at a fraction of its cost: each token's log-sum-exp over the
        vocabulary is at least the one over the subset `ids` (which holds the target), so -log p(target) is at
        least logsumexp(z[ids]) - z[target]. Only the rows `ids` of the output embedding are multiplied."""
        weight = self.lm_head.weight
        bias = getattr(self.lm_head, "bias", None)
        total = 0.0
        for h, s, chosen in zip(hidden, samples, ids):
            normed = self.norm(h)[0, :-1]
            logits = (normed @ weight[chosen].T + (0 if bias is None else bias[chosen])).float()
            if self.softcap is not None:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            target = torch.searchsorted(chosen, s[1:])  # `chosen` is sorted (torch.unique) and holds every target
            picked = logits.gather(1, target.unsqueeze(1))[:, 0]
            total += (torch.logsumexp(logits, dim=-1) - picked).double().sum().item()
        return total / (samples.shape[0] * (samples.shape[1] - 1))


def run_blocks(
    blocks: nn.ModuleList, calls: list[dict], indices: list[int], hidden: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Run the blocks `indices` in order, each with its own call kwargs, on every sample's hidden state."""

    for index in indices:
        hidden = run_block(blocks[index], hidden, calls[index])
    return hidden


def round_scores(blocks: nn.ModuleList, calls: list[dict], kept: list[int], inputs: list[torch.Tensor],
                 head: OutputHead, samples: torch.Tensor) -> list[float]:
    """One greedy round: the calibration NLL of the current model (blocks `kept`) without each kept block."""
    return [head.nll(final, samples) for final in candidate_states(blocks, calls, kept, inputs)]


def candidate_states(blocks: nn.ModuleList, calls: list[dict], kept: list[int], inputs: list[torch.Tensor]
                     ) -> list[list[torch.Tensor]]:
    """The final hidden states of the current model (blocks `kept`) without each kept block, in `kept` order."""
    states = []
    hidden = inputs  # the input of kept[pos] in the current model
    for pos, index in enumerate(kept):
        states.append(run_blocks(blocks, calls, kept[pos + 1:], hidden))
        if pos + 1 < len(kept):
            hidden = run_blocks(blocks, calls, [index], hidden)
    return states


# Bounds are compared with this relative margin: the exact NLL and its bound are summed in different orders.
BOUND_MARGIN = 1e-4


@dataclass
class RoundResult:
    """A round's winner (its position in `kept` and exact NLL) and how many candidates needed the full head."""

    best: int
    score: float
    exact: int


def bounded_round(blocks: nn.ModuleList, calls: list[dict], kept: list[int], inputs: list[torch.Tensor],
                  head: OutputHead, samples: torch.Tensor, top: int) -> RoundResult:
    """The round's winner exactly as `lowest(round_scores(...))` finds it, computing the full-vocabulary NLL only
    for the candidates that can still win (branch and bound).

    The output head costs vocabulary x hidden per token; with a large vocabulary it dominates the search. Each
    candidate first gets a lower bound (`OutputHead.lower_bound`, over the targets and the current model's `top`
    likely tokens per position: a small share of the vocabulary). Candidates are then scored exactly in order of
    their bound until the next bound exceeds the best exact score; those left cannot have the lowest score, and
    ties still go to the lower position (a candidate whose bound reaches the best within the margin is scored).
    So the same block is removed and its perplexity is the same number. The round holds every candidate's final
    hidden states at once (candidates x samples x seqlen x hidden), where the exhaustive round held one."""
    states = candidate_states(blocks, calls, kept, inputs)
    ids = head.candidates(run_blocks(blocks, calls, kept, inputs), samples, top)
    bounds = [head.lower_bound(final, samples, ids) for final in states]
    bounds = [-math.inf if math.isnan(b) else b for b in bounds]  # no bound: scored in full
    best, score, exact = -1, math.inf, 0
    for pos in sorted(range(len(kept)), key=lambda c: (bounds[c], c)):
        if bounds[pos] - BOUND_MARGIN * abs(bounds[pos]) > score:
            break
        value = head.nll(states[pos], samples)
        exact += 1
        value = math.inf if math.isnan(value) else value
        if value < score or (value == score and pos < best):
            best, score = pos, value
    if best < 0 or math.isinf(score):  # every candidate's NLL is NaN or infinite: as `lowest`, the lowest position
        best, score = 0, head.nll(states[0], samples)
    return RoundResult(best, score, exact)


def lowest(scores: list[float]) -> int:
    """Position of the lowest score; NaN counts as +inf and ties go to the lower position."""
    return min(range(len(scores)), key=lambda c: (math.inf if math.isnan(scores[c]) else scores[c], c))


def check_head(model: nn.Module, blocks: nn.ModuleList, calls: list[dict], first: torch.Tensor,
               sample: torch.Tensor, head: OutputHead) -> None:
    """Refuse a model whose own forward does not match blocks + OutputHead (e.g. an extra logit scale)."""
    ours = head.logits(run_blocks(blocks, calls, list(range(len(blocks))), [first])[0])
    theirs = model(sample.unsqueeze(0), use_cache=False).logits.float()
    if not torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * float(theirs.abs().max()) + 1e-6):
        raise PqqpError(f"sleb cannot reproduce the logits of {type(model).__name__} from its blocks, final norm "
                        "and lm_head: accepted models whose output is lm_head(norm(h)), optionally soft-capped")


def select_blocks(
    model: nn.Module, blocks: nn.ModuleList, samples: torch.Tensor, count: int, progress: bool = True,
    top: int | None = 16, counts: list[tuple[int, int]] | None = None,
) -> tuple[list[int], list[float]]:
    """SLEB Alg. 1: remove `count` blocks one at a time, each the block whose removal gives the current model
    the lowest calibration perplexity. Returns the chosen positions in removal order and the perplexity after
    each removal; the model itself is not changed. `top` (None: every candidate scored in full) sets the bounds of
    `bounded_round`; `counts` receives (candidates scored in full, candidates) per round."""
    calls = block_call_kwargs(model, blocks, samples[0])
    inputs = capture_block_inputs(model, blocks, samples)
    head = OutputHead.of(model)
    check_head(model, blocks, calls, inputs[0], samples[0], head)
    kept, chosen, perplexity = list(range(len(blocks))), [], []
    for _ in tqdm(range(count), desc=f"sleb: remove {count} of {len(blocks)} blocks", unit="block", leave=False,
                  disable=not progress):
        if top is None or not isinstance(head.lm_head, nn.Linear):
            scores = round_scores(blocks, calls, kept, inputs, head, samples)
            best = lowest(scores)
            score, exact = scores[best], len(kept)
        else:
            result = bounded_round(blocks, calls, kept, inputs, head, samples, top)
            best, score, exact = result.best, result.score, result.exact
        if counts is not None:
            counts.append((exact, len(kept)))
        chosen.append(kept.pop(best))
        perplexity.append(math.exp(score))
    return chosen, perplexity


def original_indices(config: Any, count: int) -> list[int]:
    """The original index of each current block: recorded by an earlier SLEB stage, else the position."""
    origin = getattr(config, ORIGIN, None)
    if origin is None:
        return list(range(count))
    if len(origin) != count:
        raise PqqpError(f"config.{ORIGIN} lists {len(origin)} blocks but the model has {count}: "
                        "the decoder blocks were changed outside sleb")
    return list(origin)


def renumber(block: nn.Module, index: int) -> None:
    """Set every `layer_idx` inside a block (the block's own, its attention's) to its new position, so that
    KV caches, which are indexed by layer, stay consistent."""
    for module in block.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = index


def remove_blocks(model: nn.Module, blocks: nn.ModuleList, positions: list[int]) -> None:
    """Delete the blocks at `positions` and update the config (block count, per-layer types) to match."""
    config = model.config
    gone = set(positions)
    origin = original_indices(config, len(blocks))
    types = getattr(config, "layer_types", None)
    for position in sorted(gone, reverse=True):
        del blocks[position]
    config.num_hidden_layers = len(blocks)
    if types is not None:
        config.layer_types = [t for i, t in enumerate(types) if i not in gone]
    setattr(config, ORIGIN, [o for i, o in enumerate(origin) if i not in gone])
    for index, block in enumerate(blocks):
        renumber(block, index)
        kind = getattr(block, "attention_type", None)
        if types is not None and kind is not None and kind != config.layer_types[index]:
            raise RuntimeError(f"block {index} has attention_type {kind} but config.layer_types says "
                               f"{config.layer_types[index]}")


class SLEB(Method):
    """SLEB (Song et al. 2024, Alg. 1): remove `round(p * n_blocks)` decoder blocks, greedily, each the one
    whose removal gives the lowest calibration perplexity of the current model.

    The count is Python's `round` (halves to even, as `keep_mask` rounds weights per row): p=0.25 of 4 blocks
    removes 1, p=0.1 of 4 removes none (a p that rounds to zero blocks leaves the model unchanged), and a p
    that would remove every block is refused. All blocks have the same size, so the achieved sparsity is
    removed / n_blocks and the nominal ratio is C_P = 1/(1-p), as for the other pruners.

    `samples` caps how many calibration windows score the candidates (the first ones): every candidate of
    every round costs a forward pass over them, about n^2/2 block calls per round, so the default 8 keeps the
    selection affordable (the paper's own ablation finds the choice stable with few samples).
    """

    removes_blocks = True
    name = "sleb"
    slow = True
    kind = "prune"
    scope = "model"
    granularity = "transformer block"
    needs_calibration = True
    summary = "greedy removal of whole decoder blocks by calibration perplexity (Song et al. 2024)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("p", ratio_in_unit, None, "a float in [0, 1)", "fraction of decoder blocks removed: round(p * n_blocks)"),
        Param("samples", positive_int, 8, "a positive integer", "calibration windows that score the candidate blocks"),
    )

    @property
    def sparsity(self) -> float:
        return self.values["p"]

    def check(self) -> None:
        if self.values["p"] is None:
            raise PqqpError(f"method '{self.name}' needs p=<fraction of blocks in [0, 1)>, e.g. {self.name}:p=0.25")

    def ratio(self) -> float:
        return 1.0 / (1.0 - self.sparsity)

    def blocks_to_remove(self, n_blocks: int) -> int:
        count = round(self.sparsity * n_blocks)
        if count >= n_blocks:
            raise PqqpError(f"sleb:p={self.sparsity:g} would remove all {n_blocks} decoder blocks: accepted p with "
                            f"round(p * {n_blocks}) < {n_blocks}")
        return count

    @torch.no_grad()
    def apply_model(self, model: Any, calibration: torch.Tensor | None, device: torch.device, seed: int,
                    progress: bool = True) -> dict:
        """Remove the chosen blocks from `model` in place; return them in original numbering, in removal order.

        Deterministic: the first `samples` calibration windows, no sampling, ties to the lower block index
        (`seed` is not used). The whole model is on `device` during the selection and back home after.
        """

        blocks = decoder_blocks(model)
        count = self.blocks_to_remove(len(blocks))
        origin = original_indices(model.config, len(blocks))
        if count == 0:
            return {"removed_blocks": [], "kept_blocks": len(blocks), "calibration_ppl": []}
        if calibration is None or calibration.numel() == 0:
            raise PqqpError("sleb needs calibration samples: pass calibration token ids")
        home = next(model.parameters()).device
        model.to(device)
        try:
            chosen, perplexity = select_blocks(model, blocks, calibration[: self.values["samples"]].to(device), count, progress)
        finally:
            model.to(home)
        remove_blocks(model, blocks, chosen)
        removed = [origin[i] for i in chosen]
        return {"removed_blocks": removed, "kept_blocks": len(blocks), "calibration_ppl": perplexity}
