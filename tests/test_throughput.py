"""Throughput: the suite section, the transformers fallback through the store, and (with the venv) vLLM."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pqqp_bench.errors import PqqpError
from pqqp_bench.evaluate import throughput as tp
from pqqp_bench.measure import Bench
from pqqp_bench.store import Store
from pqqp_bench.sections import load_suite

from conftest import char_tokenizer, tiny_llama


def throughput_suite(path: Path, model: str, corpus: str, **section: object) -> Path:
    lines = [f"models: ['{model}']", f"corpus: '{corpus}'", "seqlen: 32", "eval_tokens: 128", "calib_samples: 2",
             "pruners: []", "quantizers: []", "ratios: []", "bits: []", "throughput:",
             *(f"  {k}: {v}" for k, v in {"backend": "transformers", "prompt_len": 8, "output_len": 4,
                                          "num_prompts": 2, "dtype": "float32", **section}.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("section, message", [
    ({"backend": "tgi"}, "throughput backend 'tgi' is not accepted: accepted auto, vllm, transformers"),
    ({"dtype": "int4"}, "throughput dtype 'int4' is not accepted: accepted bfloat16, float16, float32"),
    ({"num_prompts": 0}, "throughput num_prompts=0 is not accepted: a positive integer"),
    ({"prompt_len": "many"}, "bad value throughput.prompt_len='many' in the suite: accepted a positive number"),
    ({"ouput_len": 4}, "unknown throughput key 'ouput_len' in the suite: accepted recipes, backend, prompt_len"),
    ({"recipes": "['quarot:w=4']"}, "unknown parameter 'w' for method 'quarot'"),
    ({"enforce_eager": "maybe"}, "bad value throughput.enforce_eager='maybe' in the suite: accepted true or false"),
])
def test_bad_throughput_section_is_one_line(tmp_path, section, message) -> None:
    path = throughput_suite(tmp_path / "s.yaml", "m", "pydoc", **section)
    with pytest.raises(PqqpError) as info:
        load_suite(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_section_options_override_and_dense_comes_first(tmp_path) -> None:
    path = throughput_suite(tmp_path / "s.yaml", "m", "pydoc", recipes="['sleb:p=0.5']")
    suite = load_suite(path, throughput_num_prompts="3", throughput_backend="auto")
    assert (suite.section("throughput").settings.num_prompts, suite.section("throughput").settings.backend) == (3, "auto")
    assert [c.label for c in suite.section("throughput").speed_cases(suite)] == ["dense", "sleb:p=0.5"]
    assert suite.cases()[0].label == "dense" and not suite.hypotheses()


def test_backend_resolution(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tp.importlib.util, "find_spec", lambda name: None)
    missing = tmp_path / "no-venv"
    chosen = tp.resolve_backend("auto", missing)
    assert chosen.name == "transformers" and "vLLM not found" in chosen.reason and str(missing) in chosen.reason
    with pytest.raises(PqqpError, match="vLLM not found .*setup_vllm.sh"):
        tp.resolve_backend("vllm", missing)


def test_kernels_are_read_from_vllm_log() -> None:
    log = ("INFO [__init__.py:846] Selected CPUInt8ScaledMMLinearKernel for CompressedTensorsW8A8Int8\n"
           "INFO Using CPUWNA16LinearKernel for AutoGPTQLinearMethod\nINFO Using max model len 8192\n")
    assert tp.kernels(log) == ["AutoGPTQLinearMethod: CPUWNA16LinearKernel",
                               "CompressedTensorsW8A8Int8: CPUInt8ScaledMMLinearKernel"]


def test_transformers_fallback_is_stored_once_and_resumed(tmp_path, model_dir, text_file, monkeypatch) -> None:
    suite = load_suite(throughput_suite(tmp_path / "s.yaml", str(model_dir), str(text_file), recipes="['sleb:p=0.5']"))
    store = Store(tmp_path / "r.sqlite")
    bench = Bench(suite, store, progress=False)
    m = bench.throughput(str(model_dir), "sleb:p=0.5")
    d = m.details
    assert d["backend"] == "transformers" and d["format"] == "transformers" and not d["low_bit"]
    assert d["prompt_tokens"] == 2 * 8 and d["output_tokens"] == 2 * 4 and m.value == pytest.approx(24 / d["elapsed"])
    dense = store.get(bench.throughput_key(str(model_dir), bench.suite.section("throughput").speed_cases(bench.suite)[0].recipe))
    assert dense is not None and d["speedup"] == pytest.approx(m.value / dense.value)
    assert m.key.metric == "throughput" and m.key.split.startswith("backend=transformers,prompt_len=8")
    assert len(store) == 2  # dense and the case: nothing else was measured

    def fail(*args, **kwargs):
        raise AssertionError("a stored throughput was measured again")

    monkeypatch.setattr(tp, "run_transformers", fail)
    monkeypatch.setattr(tp.importlib.util, "find_spec", lambda name: None)
    again = Bench(suite, store, progress=False).throughput(str(model_dir), "sleb:p=0.5")
    assert again.value == m.value and len(store) == 2
    with pytest.raises(AssertionError, match="measured again"):
        Bench(suite, store, progress=False, refresh=True).throughput(str(model_dir), "sleb:p=0.5")
    assert store.get(m.key).value == m.value  # a failed re-measurement keeps what was stored
    monkeypatch.undo()

    from pqqp_bench.experiment import Experiment

    calls, compressed = [], Experiment.compressed
    monkeypatch.setattr(Experiment, "compressed", lambda self, *a: calls.append(a) or compressed(self, *a))
    quality, speed = Bench(suite, store, progress=False).throughput_case(str(model_dir), "magnitude:p=0.5")
    assert len(calls) == 1 and quality.key.metric == "ppl" and speed.key.metric == "throughput"  # one compression
    assert len(store) == 4


THROUGHPUT_FIELDS = ["order", "backend", "version", "elapsed", "requests", "prompt_tokens", "output_tokens", "tokens_per_s",
                     "output_tokens_per_s", "quantization", "dtype", "kernels", "device", "format", "low_bit",
                     "served_as", "notes", "backend_reason", "requested", "achieved", "structure",
                     "dense_tokens_per_s", "dense_created", "speedup", "seconds"]  # a stored row's, as before the metric


def test_throughput_is_measured_as_a_metric(tmp_path, model_dir, text_file) -> None:
    """Tokens/s through the generic path (`Bench.measure` with the metric's name): the dense baseline stored
    first, the rows' fields those Bench's own throughput path stored, the backend resolved once per bench."""
    from pqqp_bench.metrics import Throughput, metric_for
    from pqqp_bench.spec import Recipe, parse_recipe

    model, recipe = str(model_dir), parse_recipe("magnitude:p=0.5")
    suite = load_suite(throughput_suite(tmp_path / "s.yaml", model, str(text_file), recipes="['magnitude:p=0.5']"))
    store = Store(tmp_path / "r.sqlite")
    bench = Bench(suite, store, progress=False)
    metric, context = bench.metric("throughput")
    assert isinstance(metric, Throughput) and metric is metric_for("throughput") and context.suite is suite
    assert metric.baseline(recipe) == Recipe(()) and metric.baseline(Recipe(())) is None
    m = bench.measure(model, recipe, metric="throughput")
    dense = store.get(bench.throughput_key(model, Recipe(())))
    assert dense is not None and bench.computed == [dense.key.digest(), m.key.digest()]  # the baseline first
    assert len(store) == 2  # nothing else was measured
    assert m.key == bench.throughput_key(model, recipe) and m.key.metric == "throughput"
    assert m.key.split == "backend=transformers,prompt_len=8,output_len=4,num_prompts=2,dtype=float32"
    assert list(m.details) == THROUGHPUT_FIELDS and list(dense.details) == THROUGHPUT_FIELDS
    assert m.details["dense_created"] == dense.created and m.details["dense_tokens_per_s"] == dense.value
    assert m.details["speedup"] == pytest.approx(m.value / dense.value) and m.value == pytest.approx(24 / m.details["elapsed"])
    assert dense.details["speedup"] == 1.0 and dense.details["dense_created"] == ""
    assert m.details["backend_reason"] == "asked for" and m.details["achieved"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert context.state["backend"] is bench.backend and bench.backend.name == "transformers"  # resolved once
    assert bench.throughput(model, recipe) == m and bench.throughput_case(model, recipe, quality=False) == (None, m)
    assert len(bench.computed) == 2  # the thin wrappers found the stored rows


def test_vllm_rows_through_the_metric(tmp_path, model_dir, text_file, monkeypatch) -> None:
    """The vLLM branch of the metric, with the export and the vLLM process stood in for: the exported checkpoint's
    description and the worker's figures are what the row stores, under the `backend=vllm` key."""
    import pqqp_bench.export as export_module
    from pqqp_bench.spec import Recipe

    class Exported:
        folder = tmp_path / "exported"

        def as_dict(self) -> dict:
            return {"format": "dense", "low_bit": False, "served_as": "dense weights", "notes": []}

    def fake_vllm(folder, settings, python, seed):
        assert folder == Exported.folder and python == "vllm-python" and seed == 0
        return {"backend": "vllm", "version": "0.0", "elapsed": 0.5, "requests": 2, "prompt_tokens": 16,
                "output_tokens": 8, "tokens_per_s": 48.0, "output_tokens_per_s": 16.0, "quantization": "none",
                "dtype": settings.dtype, "device": "cpu", "kernels": []}

    monkeypatch.setattr(tp, "resolve_backend", lambda requested, venv: tp.Backend("vllm", "vllm-python", "stood in"))
    monkeypatch.setattr(tp, "run_vllm", fake_vllm)
    monkeypatch.setattr(export_module, "export", lambda *args: Exported())
    model = str(model_dir)
    suite = load_suite(throughput_suite(tmp_path / "s.yaml", model, str(text_file), backend="auto"))
    bench = Bench(suite, Store(tmp_path / "r.sqlite"), progress=False)
    quality, m = bench.throughput_case(model, "rtn:w=8,a=8")
    dense = bench.store.get(bench.throughput_key(model, Recipe(()), "vllm"))
    assert m.key.split.startswith("backend=vllm,") and set(m.details) == set(THROUGHPUT_FIELDS) and m.value == 48.0
    assert dense is not None and m.details["speedup"] == 1.0 and m.details["dense_created"] == dense.created
    assert m.details["backend_reason"] == "stood in" and quality.key.metric == "ppl" and len(bench.store) == 3


def test_vllm_loads_an_exported_tiny_model(tmp_path, tokens) -> None:
    python = tp.venv_python()
    if not tp.has_vllm(python):
        pytest.skip(f"no vLLM in {python.parent.parent}: bash scripts/setup_vllm.sh")
    from pqqp_bench.compress import compress
    from pqqp_bench.export import export
    from pqqp_bench.spec import parse_recipe

    model = tiny_llama(layers=2, hidden=128, heads=2)  # head_dim 64: the vLLM CPU attention accepts it
    report = compress(model, parse_recipe("rtn:w=8,a=8"), tokens, progress=False)
    folder = export(model, char_tokenizer(), report, tmp_path / "m", "bfloat16").folder
    settings = tp.ThroughputSettings(prompt_len=8, output_len=4, num_prompts=2, enforce_eager=True)
    command = tp.worker_command(str(python), folder, settings, seed=0, max_model_len=64)
    done = subprocess.run(command, capture_output=True, text=True, env=tp.worker_env(str(python)), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith(tp.RESULT_PREFIX))
    result = json.loads(line[len(tp.RESULT_PREFIX):])
    assert result["quantization"] == "compressed-tensors" and result["output_tokens"] == 8
    assert "CompressedTensorsW8A8Int8: CPUInt8ScaledMMLinearKernel" in tp.kernels(done.stdout + done.stderr)


def test_leaderboard_throughput_table(tmp_path) -> None:
    from pqqp_bench.leaderboard import build
    from pqqp_bench.store import Measurement

    from synthetic import fake_model

    model = fake_model(tmp_path / "model")
    suite = load_suite(throughput_suite(tmp_path / "s.yaml", model, "pydoc", recipes="['sleb:p=0.5', 'rtn:w=8,a=8']"))
    store = Store(tmp_path / "r.sqlite")
    bench = Bench(suite, store, progress=False, lookup_only=True)
    served = {"sleb:p=0.5": (False, "dense weights (no low-bit kernel)", []),
              "rtn:w=8,a=8": (True, "INT8 W8A8, compressed-tensors int-quantized",
                              ["CompressedTensorsW8A8Int8: CPUInt8ScaledMMLinearKernel"])}
    for case, tps in zip(suite.section("throughput").speed_cases(suite)[1:], (150.0, 120.0)):
        low_bit, text, kernels = served[str(case.recipe)]
        details = {"backend": "vllm", "version": "0.32.0", "low_bit": low_bit, "served_as": text, "kernels": kernels,
                   "notes": ["float tensors cast from float32 to bfloat16 for serving"], "speedup": tps / 100.0}
        store.put(Measurement(bench.throughput_key(model, case.recipe, "vllm"), tps, details, created="2026-01-01"))
    first = [p.read_bytes() for p in build(bench, tmp_path / "a", "cmd")]
    again = [p.read_bytes() for p in build(bench, tmp_path / "b", "cmd")]
    assert first == again and not list((tmp_path / "a").glob("*.png"))  # deterministic; no grid, no plots
    text = " ".join((tmp_path / "a" / "leaderboard.md").read_text().split())  # github tables pad their columns
    assert "#### Generation throughput" in text
    assert "| sleb:p=0.5 | missing | 150 | 1.50× | vllm 0.32.0 | dense: dense weights (no low-bit kernel) (unquantized linear)" in text
    assert "low-bit: INT8 W8A8, compressed-tensors int-quantized (CompressedTensorsW8A8Int8: CPUInt8ScaledMMLinearKernel)" in text
    assert "| dense | missing | missing | missing |" in text
    # expected: the dense case, a tokens/s row per recipe (3), and the ppl of the two compressed ones
    assert "from 2 of 6 expected stored measurements" in (tmp_path / "a" / "README.md").read_text()
