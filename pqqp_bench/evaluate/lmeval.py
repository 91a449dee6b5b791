"""The bridge to EleutherAI's lm-evaluation-harness: the `pqqp` model type, offline tasks, and task metrics.

* Metrics `lm-eval:<task>/<metric>` (e.g. `lm-eval:pqqp_cloze/acc`) sit beside the harness's `ppl`.
* `evaluate_task` scores an in-memory (compressed) model on one lm-eval task through `HFLM`, the class lm-eval's
  `--model hf` uses, with the context length fixed to the harness's `seqlen` (lm-eval's default would be the
  model's whole context, a different number; design note). The `pqqp` model type (`lmeval_model.PqqpLM`)
  builds the very same `HFLM`, so `lm_eval run --model pqqp` and the harness give the same numbers.
* The offline tasks in `suites/tasks/` build their documents here from a harness corpus (`corpus=`,
  `holdout=` in lm-eval's metadata, which lm-eval fills from `--model_args`; default pydoc, 0.2):
  `pqqp_perplexity` (rolling loglikelihood over held-out passages) and `pqqp_cloze` (LAMBADA-style
  last-word prediction, rule in `cloze_docs`).

lm-eval 0.4.13 has no plugin discovery for models (its registry is filled from its own module table): the
installed `pqqp_bench_lmeval.pth` registers `pqqp` as lm-eval loads that table (`pqqp_bench_lmeval`); `register()`
does it explicitly, for a checkout used without installing (PYTHONPATH).
lm_eval itself is imported only inside functions: the core installs and tests without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PqqpError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PREFIX = "lm-eval:"
TASKS_DIR = Path(__file__).resolve().parents[2] / "suites" / "tasks"
INSTALL_HINT = "pip install 'pqqp-bench[lmeval]'"

CLOZE_MAX_WORDS = 100  # a passage's context is at most this many words ...
CLOZE_MIN_WORDS = 20  # ... and at least this many
PASSAGE_MIN_CHARS = 2000  # perplexity documents: consecutive paragraphs joined until this long


# --------------------------------------------------------------------------------------------- metric names


def parse_metric(metric: str) -> tuple[str, str] | None:
    """`lm-eval:<task>/<metric>` -> (task, metric); `ppl` -> None (the harness's own perplexity)."""
    if metric == "ppl":
        return None
    task, slash, name = metric[len(PREFIX):].partition("/") if metric.startswith(PREFIX) else ("", "", "")
    if not (task and slash and name) or "," in name:
        raise PqqpError(f"metric {metric!r} is not accepted: accepted ppl or lm-eval:<task>/<metric>, "
                        f"e.g. lm-eval:pqqp_cloze/acc, lm-eval:pqqp_perplexity/word_perplexity")
    return task, name


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise PqqpError(f"lm-eval metrics need lm-eval: {INSTALL_HINT}") from None


def register() -> None:
    """Make `--model pqqp` known to lm-eval (lazily: the class is imported when lm-eval first asks for it)."""
    require_lm_eval()
    import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's own models first)

    import pqqp_bench_lmeval

    if not pqqp_bench_lmeval.register():
        raise PqqpError("lm-eval's model registry refused the `pqqp` model type: accepted lm-eval >=0.4.13,<0.5")


# --------------------------------------------------------------------------------------------- evaluation


def hflm_options(seqlen: int, batch_size: int | str) -> dict[str, Any]:
    """The HFLM settings both the harness and `--model pqqp` use (equal settings give equal numbers)."""
    return {"max_length": int(seqlen), "batch_size": batch_size}


@dataclass
class TaskResult:
    """One lm-eval metric of one task: its value, lm-eval's standard error, and the per-document samples."""

    task: str
    metric: str
    value: float
    stderr: float | None
    samples: list = field(repr=False)
    max_length: int = 0
    seconds: float = 0.0
    convention: str = ""


def convention(metric: str, max_length: int) -> str:
    if metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        return (f"lm-eval {metric}: rolling loglikelihood over whole documents, windows of {max_length} tokens "
                f"(lm-eval convention; not the token-level perplexity of the paper)")
    return f"lm-eval {metric}, context {max_length} tokens"


def task_manager(corpus: str, holdout: float, include_path: Path = TASKS_DIR) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_path), metadata={"corpus": corpus, "holdout": holdout})


def evaluate_task(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", metric: str, *, seqlen: int,
                  corpus: str, holdout: float, batch_size: int = 1, limit: int | None = None,
                  manager: Any = None) -> TaskResult:
    """Score `model` on the lm-eval task named by `metric` (`lm-eval:<task>/<metric>`) through HFLM.

    `manager`: a `task_manager(corpus, holdout)` to reuse (building one indexes every lm-eval task: seconds)."""
    import time

    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    task, name = parse_metric(metric) or ("", "")
    if not task:
        raise PqqpError("metric 'ppl' is the harness's own perplexity, not an lm-eval task")
    start = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, **hflm_options(seqlen, batch_size))
    out = simple_evaluate(model=lm, tasks=[task], task_manager=manager or task_manager(corpus, holdout), limit=limit,
                          log_samples=True, verbosity="ERROR")
    return task_result(out, task, name, seqlen, time.perf_counter() - start)


def task_result(out: dict, task: str, name: str, max_length: int, seconds: float) -> TaskResult:
    """Pick one metric (lm-eval's filter `none`) out of lm-eval's results dictionary."""
    scores = out["results"].get(task, {})
    key = f"{name},none"
    if key not in scores:
        known = sorted(k.split(",")[0] for k in scores if "," in k and not k.startswith(("alias", "sample")))
        raise PqqpError(f"task {task!r} reports no metric {name!r}: accepted {', '.join(k for k in known if '_stderr' not in k)}")
    stderr = scores.get(f"{name}_stderr,none")
    samples = [s[name] for s in out["samples"][task]]
    return TaskResult(task, name, float(scores[key]), float(stderr) if isinstance(stderr, (int, float)) else None,
                      [list(s) if isinstance(s, tuple) else s for s in samples], max_length, seconds,
                      convention(name, max_length))


# --------------------------------------------------------------------------------------------- offline tasks


def held_out_text(corpus: str, holdout: float) -> str:
    """The evaluation text of a harness corpus: its test split, or the last `holdout` of its characters from
    the next paragraph on (the harness's token split of the same text lies at about the same place)."""
    from ..data import load_texts

    holdout = float(holdout)
    if not 0.0 < holdout < 1.0:
        raise PqqpError(f"holdout={holdout} is not a fraction: accepted a float in (0, 1)")
    texts = load_texts(str(corpus))
    if texts.evaluation:
        return texts.evaluation
    cut = int(len(texts.text) * (1.0 - holdout))
    paragraph = texts.text.find("\n\n", cut)
    return texts.text[paragraph + 2 if paragraph >= 0 else cut:]


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each with its whitespace collapsed to single spaces."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def passage_docs(text: str, min_chars: int = PASSAGE_MIN_CHARS) -> list[dict[str, str]]:
    """Perplexity documents: consecutive paragraphs (original text) joined until at least `min_chars` long."""
    docs, current = [], []
    for para in (p for p in re.split(r"\n\s*\n", text) if p.strip()):
        current.append(para.strip("\n"))
        if sum(len(p) for p in current) >= min_chars:
            docs.append({"page": "\n\n".join(current)})
            current = []
    if current:
        docs.append({"page": "\n\n".join(current)})
    return docs


TARGET = re.compile(r"[A-Za-z]{3,}")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def cloze_docs(text: str, max_words: int = CLOZE_MAX_WORDS, min_words: int = CLOZE_MIN_WORDS) -> list[dict[str, str]]:
    """LAMBADA-style passages whose last word is predictable from the passage, generated deterministically.

    Rule: every paragraph is cut into sentences (at `.`, `!` or `?` followed by whitespace, and at the
    paragraph's end). A sentence ending
    is a candidate whose last word, without its final punctuation, is the target when (1) it is alphabetic and
    at least 3 letters long and (2) it occurs earlier in the passage (case-insensitively): the LAMBADA
    condition that the context, not the sentence alone, gives the word away. The passage is the paragraph's
    text before the target, trimmed at the front to its last `max_words` words and starting after the previous
    passage (passages never overlap); it needs at least `min_words` words. Each document is
    {"context", "target"}; a model is right when the target (with its leading space) is its greedy
    continuation (lm-eval's `acc` for loglikelihood tasks).
    """
    docs = []
    for para in paragraphs(text):
        words: list[str] = []
        for sentence in SENTENCE_END.split(para):
            words += sentence.split()
            if not words:
                continue
            target = words[-1].rstrip(".!?")
            context = words[:-1][-max_words:]
            seen = {w.strip(".,;:!?()[]\"'`").lower() for w in context}
            if TARGET.fullmatch(target) and target.lower() in seen and len(context) >= min_words:
                docs.append({"context": " ".join(context), "target": target})
                words = []
    return docs


def dataset(docs: list[dict[str, str]]) -> Any:
    import datasets

    if not docs:
        raise PqqpError("the corpus's held-out text yields no documents for this task: give a longer corpus")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def cloze_dataset(corpus: str = "pydoc", holdout: float = 0.2, **_model_args: Any) -> Any:
    """lm-eval `custom_dataset` of the `pqqp_cloze` task (lm-eval passes the model args as metadata too)."""
    return dataset(cloze_docs(held_out_text(corpus, holdout)))


def passage_dataset(corpus: str = "pydoc", holdout: float = 0.2, **_model_args: Any) -> Any:
    """lm-eval `custom_dataset` of the `pqqp_perplexity` task."""
    return dataset(passage_docs(held_out_text(corpus, holdout)))

