"""Measuring through the store on a tiny model: computed once, reused, refreshed on demand, and turned into
hypothesis points with the paper's definitions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pqqp_bench.analysis import Analysis
from pqqp_bench.hypothesis import metric_from_ppl
from pqqp_bench.measure import Bench, Missing, uses_seed
from pqqp_bench.spec import parse_recipe
from pqqp_bench.store import Store
from pqqp_bench.suite import Suite


@pytest.fixture
def suite(model_dir: Path, text_file: Path) -> Suite:
    return Suite(models=(str(model_dir),), corpus=str(text_file), seqlen=32, calib_samples=4, eval_tokens=128,
                 pruners=("wanda",), quantizers=("rtn",), ratios=(0.3,), bits=(4, 8), curve_bits=(3, 4, 8),
                 bootstrap=200, device="cpu")


def bench_on(suite: Suite, path: Path, **kw) -> Bench:
    return Bench(suite, Store(path), progress=False, **kw)


def test_measured_once_then_reused_from_the_store(suite: Suite, tmp_path: Path) -> None:
    bench = bench_on(suite, tmp_path / "s.sqlite")
    first = bench.measure(suite.models[0], "wanda:p=0.3 > rtn:w=4,a=4,kv=4")
    again = bench.measure(suite.models[0], "wanda:p=0.3 > rtn:w=4,a=4,kv=4")
    assert len(bench.computed) == 1 and again.value == first.value and again.created == first.created
    assert len(first.details["window_nll"]) == 4 and math.isfinite(first.value)
    assert first.details["achieved"]["w_bits"] == 4 and first.details["order"] == "P>Q"

    later = bench_on(suite, tmp_path / "s.sqlite", lookup_only=True)  # a new session: nothing is computed
    assert later.measure(suite.models[0], "wanda:p=0.3 > rtn:w=4,a=4,kv=4").value == first.value
    assert later.experiments == {} and later.computed == []
    with pytest.raises(Missing):
        later.measure(suite.models[0], "dense")


def test_refresh_recomputes_each_measurement_once(suite: Suite, tmp_path: Path) -> None:
    bench_on(suite, tmp_path / "s.sqlite").measure(suite.models[0], "dense")
    refreshing = bench_on(suite, tmp_path / "s.sqlite", refresh=True)
    a = refreshing.measure(suite.models[0], "dense")
    b = refreshing.measure(suite.models[0], "dense")
    assert len(refreshing.computed) == 1 and a.created == b.created
    assert len(refreshing.store) == 1


def test_seed_only_keys_recipes_it_can_change(suite: Suite, tmp_path: Path) -> None:
    assert not uses_seed(parse_recipe("rtn:w=4")) and not uses_seed(parse_recipe("magnitude:p=0.5"))
    assert uses_seed(parse_recipe("wanda:p=0.5")) and uses_seed(parse_recipe("quarot > rtn:w=4"))
    bench = bench_on(suite, tmp_path / "s.sqlite")
    assert bench.key(suite.models[0], parse_recipe("rtn:w=4"), 3).seed == -1
    assert bench.key(suite.models[0], parse_recipe("wanda:p=0.5"), 3).seed == 3


def test_point_follows_the_paper_definitions(suite: Suite, tmp_path: Path) -> None:
    bench = bench_on(suite, tmp_path / "s.sqlite")
    spec = suite.hypotheses()[0].points()[0]  # wanda p=0.3, 4 bits
    point, extra = Analysis(bench).point(spec)
    qp = bench.measure(spec.model, "rtn:w=4,a=4,kv=4 > wanda:p=0.3").value
    pq = bench.measure(spec.model, "wanda:p=0.3 > rtn:w=4,a=4,kv=4").value
    assert point.advantage == pytest.approx(metric_from_ppl(qp) - metric_from_ppl(pq), rel=1e-9)  # A(Q->P), Def. 4
    assert point.c_q == 4.0 and point.stderr >= 0.0
    curve = Analysis(bench).curve(spec.model, "rtn")
    assert [c for c, _ in curve] == [1.0, 2.0, 4.0, 16 / 3]  # dense at C_Q = 1, then 8, 4, 3 bits
    pruned = metric_from_ppl(bench.measure(spec.model, "wanda:p=0.3").value)
    ms = [m for _, m in curve]
    if point.cer_p.bound == "exact":  # the pruned model's M lies on the curve between two measured points
        assert min(ms) <= pruned <= max(ms)
    else:
        assert pruned > max(ms) if point.cer_p.bound == "below" else pruned < min(ms)
    assert extra["dense_ppl"] == bench.measure(spec.model, "dense").value


# --- keys: byte-identical to those of the code before throughput became a metric ---------------------------

HARNESS = "0.0.0+code.000000000000"  # pinned: the code's fingerprint changes with any change to computing code
SPLITS = {"ppl": "holdout=0.2,seqlen=32,tokens=128,start=none", "lm": "holdout=0.2,max_length=32,limit=20",
          "lm0": "holdout=0.2,max_length=32",
          "throughput": "backend={},prompt_len=8,output_len=4,num_prompts=2,dtype=float32"}
CALIBRATIONS = {"dense": "", "rtn:w=4": "", "sleb:p=0.5": "samples=2,seqlen=32,start=none",
                "wanda:p=0.3 > rtn:w=4": "samples=2,seqlen=32,schedule=staged,start=none"}
# (suite, recipe, seed or throughput backend) -> digest, computed by Bench.key / Bench.throughput_key of commit
# ee206fb (Bench's own throughput path), with the model named `tiny` and its hash and the harness pinned
EARLIER_DIGESTS = {
    ("ppl", "dense", 0): "fbb819782a00df502c6ef0ae864343df3b58ad807e6801ddbb1dcfbcd761915c",
    ("ppl", "rtn:w=4", 1): "f290961a39f4dd3ba74ae1b31e70f991a61192c9cf5dc3ef8c4f226234a7278c",
    ("ppl", "wanda:p=0.3 > rtn:w=4", 0): "1504a06d01971fe26ab5e8eafc32bcccd8afde2907d0733259bd23277dfa935d",
    ("ppl", "wanda:p=0.3 > rtn:w=4", 1): "d1fb6d7d6c890c68360fb9d2fb4cd3f5f1b52da2eb6a782e209cc79cc1689ff6",
    ("ppl", "sleb:p=0.5", 1): "38b6f5c8d170754ba650dccadbd7e6db6887d5b8cd52e187fe2f75414e3908b6",
    ("lm", "dense", 0): "b8edf32a4df9418599cf503ff418815b7c8aeba18a065639e31340ac5a7ff4f9",
    ("lm", "wanda:p=0.3 > rtn:w=4", 1): "527335a9ccd59d2d90035c965c6d2f979e7cc485edfb1298eaf52030bc769c15",
    ("lm", "sleb:p=0.5", 0): "26eb1dd292f68d2db3944f99875891c7ba33037d264336674dfdc675c1f92f7a",
    ("lm0", "dense", 0): "9786547399a6b0506a732f7a4ca15488abaff8cb5d418ce6edc6c353aaedac3b",
    ("lm0", "wanda:p=0.3 > rtn:w=4", 0): "349059b36abafcd7d2d2a28ab6d5b611a59b2995749fa2b8ad728ae87ccccdb3",
    ("throughput", "dense", None): "ee436f3fb16fd6ae81841a719be72449388ae351f470b5091606cc46c39eec33",
    ("throughput", "dense", "vllm"): "0329cf886cb3d9b312036b5aaeaca71e500b8fd846cb450e4884f5a5a4cb2c4e",
    ("throughput", "sleb:p=0.5", None): "3960fc3bb5cfe66166f143d07bf8afa6986a4539a019c87f12ea46012626277d",
    ("throughput", "sleb:p=0.5", "vllm"): "39de07df8e091625d0d4b91061443fe2a600d138c62adde06598aefb14d6e7a3",
    ("throughput", "wanda:p=0.3 > rtn:w=4", None): "8e77fabb619118947d235540b7e15ed91719ad37ca80c27cd3d5c02f0aae9a5b",
    ("throughput", "wanda:p=0.3 > rtn:w=4", "vllm"): "f904c8b3430a9042abc82c41482491daca214ad0607f3eef41cea0a6179a9dd6",
}


def test_keys_of_every_metric_are_those_of_the_earlier_code(tmp_path: Path) -> None:
    """Stored rows stay found: ppl, lm-eval and throughput keys (so their digests) are byte for byte what they were
    before the metrics' splits moved out of Bench."""
    from dataclasses import replace

    from pqqp_bench.evaluate.throughput import ThroughputSettings
    from pqqp_bench.sections.throughput import Throughput

    from synthetic import fake_model

    model = fake_model(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the order of pruning and quantization changes a compressed model. " * 200)
    grid = dict(models=(model,), corpus=str(corpus), seqlen=32, eval_tokens=128, calib_samples=2, seeds=(0, 1))
    settings = ThroughputSettings(backend="transformers", prompt_len=8, output_len=4, num_prompts=2, dtype="float32")
    suites = {"ppl": Suite(**grid, sections=(Throughput((parse_recipe("sleb:p=0.5"),), settings),)),
              "lm": Suite(**grid, metric="lm-eval:pqqp_cloze/acc", lm_eval_limit=20),
              "lm0": Suite(**grid, metric="lm-eval:pqqp_cloze/acc")}
    benches = {}
    for name, suite in suites.items():
        bench = benches[name] = bench_on(suite, tmp_path / f"{name}.sqlite", lookup_only=True)
        bench.fingerprints[model] = "model-hash"  # pinned: saved tokenizer files differ between library versions
        bench.__dict__["harness"] = HARNESS
    benches["throughput"] = benches["ppl"]
    for (kind, text, which), digest in EARLIER_DIGESTS.items():
        bench, recipe = benches[kind], parse_recipe(text)
        if kind == "throughput":
            key = bench.throughput_key(model, recipe, which)
            if which is None:  # the generic key of the metric is the same key
                assert key == bench.key(model, recipe, bench.suite.seeds[0], metric="throughput")
        else:
            key = bench.key(model, recipe, which)
        key = replace(key, model="tiny")
        split = SPLITS[kind].format(which or "transformers")
        assert (key.corpus, key.split, key.calibration, key.metric, key.harness_version) == (
            "corpus.txt:59f5ba2eab249357", split, CALIBRATIONS[text], "throughput" if kind == "throughput"
            else suites[kind].metric, HARNESS), (kind, text, which)
        assert key.digest() == digest, (kind, text, which)
