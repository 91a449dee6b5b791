"""The lm-eval bridge: metric names, the offline tasks' documents, the hypothesis on an lm-eval metric, and
`lm-eval run --model pqqp` (lm-eval's own CLI) giving the numbers the harness stores."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import char_tokenizer, outcomes, tiny_llama
from pqqp_bench.analysis import Analysis
from pqqp_bench.errors import PqqpError
from pqqp_bench.evaluate.lmeval import TASKS_DIR, cloze_docs, parse_metric, passage_docs
from pqqp_bench.hypothesis import higher_is_better, oriented, paired_bootstrap_samples, recovery
from pqqp_bench.measure import Bench
from pqqp_bench.store import Store
from pqqp_bench.suite import Suite

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "magnitude:p=0.3 > rtn:w=8,a=8,kv=8"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_metric_names() -> None:
    assert parse_metric("ppl") is None
    assert parse_metric("lm-eval:pqqp_cloze/acc") == ("pqqp_cloze", "acc")
    assert parse_metric("lm-eval:arc_challenge/acc_norm") == ("arc_challenge", "acc_norm")
    for bad in ("acc", "lm-eval:pqqp_cloze", "lm-eval:/acc", "lm-eval:pqqp_cloze/acc,none"):
        with pytest.raises(PqqpError, match=r"metric .* accepted ppl or lm-eval:<task>/<metric>"):
            parse_metric(bad)
    with pytest.raises(PqqpError, match="'lm-eval:cloze'"):
        Suite(metric="lm-eval:cloze")


def test_metric_directions() -> None:
    assert higher_is_better("lm-eval:pqqp_cloze/acc") and not higher_is_better("lm-eval:pqqp_cloze/perplexity")
    assert not higher_is_better("lm-eval:pqqp_perplexity/bits_per_byte")
    assert oriented("lm-eval:pqqp_perplexity/word_perplexity", 30.0) == -30.0
    assert oriented("lm-eval:pqqp_cloze/acc", 0.4) == 0.4
    assert recovery("lm-eval:pqqp_cloze/acc", 0.3, 0.6) == 0.5
    assert recovery("lm-eval:pqqp_perplexity/word_perplexity", 40.0, 20.0) == 0.5


def test_paired_bootstrap_over_documents() -> None:
    acc = paired_bootstrap_samples("lm-eval:t/acc", [1, 1, 0, 1], [1, 0, 0, 0], resamples=500)
    assert acc.value == pytest.approx(0.5) and 0 < acc.stderr < 0.5
    qp, pq = [[-20.0, 10], [-30.0, 12]], [[-24.0, 10], [-33.0, 12]]
    word = paired_bootstrap_samples("lm-eval:t/word_perplexity", qp, pq, resamples=50)
    assert word.value == pytest.approx(-math.exp(50 / 22) + math.exp(57 / 22))  # -ppl_qp - (-ppl_pq) > 0
    bpb = paired_bootstrap_samples("lm-eval:t/bits_per_byte", qp, pq, resamples=50)
    assert bpb.value == pytest.approx((-50 / 22 + 57 / 22) / math.log(2))
    with pytest.raises(PqqpError, match="same documents"):
        paired_bootstrap_samples("lm-eval:t/acc", [1, 0], [1], resamples=50)


def test_cloze_passages_end_on_a_word_the_passage_already_holds() -> None:
    filler = " ".join(f"word{i}" for i in range(25))
    text = (f"The cache keeps a value. {filler} and then the cache.\n\n"  # target 'cache' seen earlier: kept
            f"A short one about a cache.\n\n"  # fewer than 20 context words: skipped
            f"{filler} ends on a fresh noun like zebra.\n\n"  # 'zebra' not seen before: skipped
            f"The list grows. {filler} the list\n\n"  # a paragraph's end ends a passage too: kept
            f"{filler} then x.")  # 'x' too short: skipped
    docs = cloze_docs(text)
    assert docs == [{"context": f"The cache keeps a value. {filler} and then the", "target": "cache"},
                    {"context": f"The list grows. {filler} the", "target": "list"}]
    assert cloze_docs(text) == docs  # deterministic
    long = "alpha " * 150 + "beta alpha."
    (doc,) = cloze_docs(long)
    assert doc["target"] == "alpha" and len(doc["context"].split()) == 100


def test_perplexity_documents_keep_the_text_and_join_short_paragraphs() -> None:
    paras = [f"paragraph {i} " + "x" * 900 for i in range(5)]
    docs = passage_docs("\n\n".join(paras))
    assert [d["page"] for d in docs] == ["\n\n".join(paras[0:3]), "\n\n".join(paras[3:5])]


# ---------------------------------------------------------------------------------------- with lm-eval


@pytest.fixture
def sentences(tmp_path: Path) -> Path:
    """Paragraphs of sentences that end on a word used earlier, so the cloze task has documents."""
    words = "the model keeps its order while pruning and quantization change the weights of a layer".split()
    gen = torch.Generator().manual_seed(3)
    paragraphs = []
    for _ in range(30):
        picks = torch.randint(0, len(words), (40,), generator=gen).tolist()
        paragraphs.append(" ".join(words[i] for i in picks) + ". Then the model keeps the weights.")
    path = tmp_path / "sentences.txt"
    path.write_text("\n\n".join(paragraphs))
    return path


@pytest.fixture
def lm_model_dir(tmp_path: Path) -> Path:
    """The tiny Llama with a tokenizer that names an end-of-text token (lm-eval's rolling windows need one)."""
    folder = tmp_path / "tiny-llama-eot"
    tiny_llama().save_pretrained(folder)
    tok = char_tokenizer()
    tok.eos_token = "<unk>"
    tok.save_pretrained(folder)
    return folder


def lm_suite(model: Path, corpus: Path, metric: str, **extra) -> Suite:
    return Suite(models=(str(model),), corpus=str(corpus), seqlen=64, calib_samples=2, eval_tokens=64,
                 pruners=("magnitude",), quantizers=("rtn",), ratios=(0.3,), bits=(4, 8), curve_bits=(4, 8),
                 bootstrap=100, device="cpu", metric=metric, **extra)


def test_installing_pqqp_bench_registers_the_model_type_with_lm_eval() -> None:
    """A fresh interpreter that imports only lm-eval finds `pqqp`, beside lm-eval's own models (the registry is
    not left holding `pqqp` alone, which would hide them), and loads it lazily."""
    pytest.importorskip("lm_eval", reason="needs lm-eval: pip install 'pqqp-bench[lmeval]'")
    code = ("import sys\nfrom lm_eval.api.registry import get_model, model_registry\n"
            "assert 'pqqp_bench.evaluate.lmeval_model' not in sys.modules\n"
            "print(get_model('pqqp').__name__, get_model('hf').__name__, len(model_registry) > 10)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, timeout=300)
    assert done.returncode == 0, "pqqp_bench_lmeval.pth missing? reinstall pqqp-bench: " + done.stderr[-2000:]
    assert done.stdout.split() == ["PqqpLM", "HFLM", "True"]


def test_registration_finder_wraps_only_lm_eval_models() -> None:
    lm_eval = pytest.importorskip("lm_eval", reason="needs lm-eval: pip install 'pqqp-bench[lmeval]'")
    from pqqp_bench_lmeval import LmEvalModelsFinder, install

    finder = LmEvalModelsFinder()
    assert finder.find_spec("json", None) is None and finder.find_spec("lm_eval", None) is None
    try:
        spec = finder.find_spec("lm_eval.models", lm_eval.__path__)
        assert type(spec.loader).__name__ == "_RegisteringLoader"
        assert Path(spec.origin).parts[-2:] == ("models", "__init__.py")
    finally:
        install()  # the finder removes itself once used: put it back (or register, where lm-eval is loaded)


def test_lm_eval_cli_gives_the_stored_numbers(lm_model_dir: Path, sentences: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="needs lm-eval: pip install 'pqqp-bench[lmeval]'")
    out = tmp_path / "out"
    # lm-eval's own command line: the `pqqp` type is registered by the installed pqqp_bench_lmeval.pth alone
    args = [sys.executable, "-m", "lm_eval", "run", "--model", "pqqp", "--model_args",
            f"pretrained={lm_model_dir}", f'recipe="{RECIPE}"', f"corpus={sentences}", "seqlen=64",
            "calib_samples=2", "--tasks", "pqqp_cloze,pqqp_perplexity", "--include_path", str(TASKS_DIR),
            "--device", "cpu", "--output_path", str(out)]
    env = {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    cli = json.loads(results.read_text())["results"]
    with Store(tmp_path / "s.sqlite") as store:
        for task, name in (("pqqp_cloze", "perplexity"), ("pqqp_cloze", "acc"), ("pqqp_perplexity", "word_perplexity"),
                           ("pqqp_perplexity", "bits_per_byte")):
            metric = f"lm-eval:{task}/{name}"
            stored = Bench(lm_suite(lm_model_dir, sentences, metric), store, progress=False).measure(
                str(lm_model_dir), RECIPE)
            assert stored.key.metric == metric and stored.details["documents"] > 0
            assert stored.value == pytest.approx(cli[task][f"{name},none"], rel=1e-9), metric
        assert len(store.query(recipe=RECIPE)) == 4  # one row per metric


def test_hypothesis_points_on_an_lm_eval_metric(lm_model_dir: Path, sentences: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="needs lm-eval: pip install 'pqqp-bench[lmeval]'")
    os.environ.update(OFFLINE)
    suite = lm_suite(lm_model_dir, sentences, "lm-eval:pqqp_cloze/perplexity", lm_eval_limit=4)
    with Store(tmp_path / "s.sqlite") as store:
        bench = Bench(suite, store, progress=False)
        points = Analysis(bench).hypothesis_points(suite.hypotheses()[0])
        for point, extra in points:
            qp, pq = extra["ppl_qp"][0], extra["ppl_pq"][0]  # the metric's values (here lm-eval's perplexity)
            assert point.advantage == pytest.approx(pq - qp, rel=1e-9)  # A(Q->P) = M(Q->P) - M(P->Q), M = -value
            assert math.isfinite(point.stderr) and point.stderr >= 0
        assert {m.key.metric for m in store.query()} == {suite.metric}
        assert all(m.details["documents"] == 4 and "limit=4" in m.key.split for m in store.query())


def test_pytest_plugin_runs_the_grid_on_an_lm_eval_metric(lm_model_dir: Path, sentences: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="needs lm-eval: pip install 'pqqp-bench[lmeval]'")
    (tmp_path / "test_grid.py").write_text((ROOT / "suites" / "test_grid.py").read_text())
    (tmp_path / "lm.yaml").write_text(
        f"models: ['{lm_model_dir}']\ncorpus: '{sentences}'\nseqlen: 64\ncalib_samples: 2\neval_tokens: 64\n"
        "device: cpu\npruners: [magnitude]\nquantizers: [rtn]\nratios: [0.3]\nbits: [4, 8]\ncurve_bits: [4, 8]\n"
        "bootstrap: 100\nlm_eval_limit: 4\nmax_ppl_ratio: 1000000\n")
    store = tmp_path / "store.sqlite"
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "test_grid.py", "--pqqp-suite", "lm.yaml", "--pqqp-store",
                           str(store), "--pqqp-metric", "lm-eval:pqqp_cloze/perplexity", "-p", "no:cacheprovider", "-rA", "-v"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    out = done.stdout + done.stderr
    assert "test_case[" in out and " FAILED " not in out and "ERROR" not in out, out[-3000:]
    assert "cases: lm-eval:pqqp_cloze/perplexity" in out, out[-3000:]
    (verdict,) = outcomes(out, "test_progressive_intensity")
    assert verdict == "PASSED" or (verdict == "FAILED" and "violated:" in out) or (
        verdict == "SKIPPED" and "the smallest slope these data detect" in out), out[-3000:]
    with Store(store) as opened:
        metrics = {m.key.metric for m in opened.query()}
    assert metrics == {"lm-eval:pqqp_cloze/perplexity"}
