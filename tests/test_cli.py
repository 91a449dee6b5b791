"""The `pqqp` command line: one-line usage errors with exit code 2, a small real run, and the listings."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pqqp_bench import __version__
from pqqp_bench.cli import main


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Whatever a command converts goes under the test's tmp_path, never into the user's cache."""
    monkeypatch.setenv("PQQP_CACHE_DIR", str(tmp_path / "pqqp-cache"))


@pytest.fixture
def run_args(model_dir, text_file):
    """`pqqp run` on the tiny model and text file with small settings; later flags override these."""
    return [
        "run", "--model", str(model_dir), "--corpus", str(text_file), "--device", "cpu", "--seqlen", "32",
        "--calib-samples", "4", "--eval-tokens", "128", "--no-progress",
    ]


def error_line(rc: int, err: str) -> str:
    """The single `pqqp: error:` line of a failed command (exit code 2, no traceback)."""
    assert rc == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("pqqp: error:")]
    assert len(errors) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0]  # the error is the last thing printed
    assert len(errors[0]) > len("pqqp: error: ") + 10
    return errors[0]


RECIPE_ERRORS = [
    ("unknown-method", "sparsify:p=0.5", ["'sparsify'", "magnitude", "rtn", "wanda"]),
    ("p-one", "wanda:p=1.0", ["p='1.0'", "[0, 1)"]),
    ("p-negative", "magnitude:p=-0.1", ["p='-0.1'", "[0, 1)"]),
    ("bits-1", "rtn:w=1", ["w='1'", "2..16"]),
    ("bits-17", "rtn:w=4,a=17", ["a='17'", "2..16"]),
    ("nm-4:4", "wanda:nm=4:4", ["nm='4:4'", "N < M"]),
    ("nm-5:4", "wanda:nm=5:4", ["nm='5:4'", "N < M"]),
    ("dangling-end", "wanda:p=0.5 >", ["'wanda:p=0.5 >'", "at the end"]),
    ("dangling-start", "> rtn:w=4", ["'> rtn:w=4'", "at the start"]),
]


@pytest.mark.parametrize("recipe, names", [c[1:] for c in RECIPE_ERRORS], ids=[c[0] for c in RECIPE_ERRORS])
def test_bad_recipe_is_one_line_error_before_loading_anything(run_args, capsys, recipe, names):
    rc = main(run_args + ["--recipe", "wanda:p=0.5", "--recipe", recipe])
    out, err = capsys.readouterr()
    line = error_line(rc, err)
    for name in names:
        assert name in line
    assert out == ""  # recipes are parsed before the model is loaded
    assert "Loading" not in err


def corrupt_gguf(tmp_path: Path) -> list[str]:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(200)))
    return ["--model", str(path), "--cache-dir", str(tmp_path / "cache")]


def empty_corpus(tmp_path: Path) -> list[str]:
    path = tmp_path / "empty.txt"
    path.write_text("")
    return ["--corpus", str(path)]


SETTING_ERRORS = [
    ("missing-model", lambda tmp: ["--model", "/no/such/dir"], ["'/no/such/dir'"]),
    ("missing-gguf", lambda tmp: ["--model", "./missing.gguf"], ["'./missing.gguf'"]),
    ("corrupt-gguf", corrupt_gguf, ["cannot read GGUF file", "broken.gguf"]),
    ("empty-corpus", empty_corpus, ["empty.txt", "empty"]),
    ("unknown-corpus", lambda tmp: ["--corpus", "gutenberg"], ["'gutenberg'", "pydoc"]),
    ("seqlen-over-context", lambda tmp: ["--seqlen", "300", "--eval-tokens", "600"], ["seqlen=300", "2..256"]),
    ("too-many-calibration-samples", lambda tmp: ["--calib-samples", "100000"], ["100000 calibration samples", "accepted n <="]),
    ("too-many-eval-tokens", lambda tmp: ["--eval-tokens", "10000000"], ["10000000 tokens", "accepted 32.."]),
    ("unknown-device", lambda tmp: ["--device", "tpu"], ["'tpu'", "cpu"]),
    ("zero-calibration-samples", lambda tmp: ["--calib-samples", "0"], ["calib_samples=0"]),
    ("holdout-outside", lambda tmp: ["--holdout", "1.5"], ["holdout=1.5", "(0, 1)"]),
]


@pytest.mark.parametrize("extra, names", [c[1:] for c in SETTING_ERRORS], ids=[c[0] for c in SETTING_ERRORS])
def test_bad_setting_is_one_line_error(run_args, tmp_path, monkeypatch, capsys, extra, names):
    monkeypatch.chdir(tmp_path)
    rc = main(run_args + extra(tmp_path) + ["--recipe", "wanda:p=0.5"])
    out, err = capsys.readouterr()
    line = error_line(rc, err)
    for name in names:
        assert name in line
    assert "recipe     " not in out  # nothing was run


def test_group_size_not_dividing_the_layer_is_one_line_error(run_args, capsys):
    rc = main(run_args + ["--recipe", "rtn:w=4,g=48"])  # hidden size 64
    out, err = capsys.readouterr()
    line = error_line(rc, err)
    assert "g=48" in line and "in_features=64" in line


def test_console_script_exits_2_with_one_line(tmp_path):
    script = Path(sys.executable).with_name("pqqp")
    script = str(script) if script.exists() else shutil.which("pqqp")
    if script is None:
        pytest.skip("the pqqp console script is not installed")
    env = {**os.environ, "PQQP_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [script, "run", "--model", "/no/such/dir", "--recipe", "wanda:p=0.5 > rtn:w=1"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pqqp: error:") and "w='1'" in lines[0]


def test_run_both_orders_dense_and_json(run_args, tmp_path, capsys):
    out_json = tmp_path / "results.json"
    rc = main(run_args + [
        "--recipe", "wanda:p=0.5", "--recipe", "rtn:w=4,a=4,kv=4 > wanda:p=0.5", "--both-orders", "--dense",
        "--json", str(out_json),
    ])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "pqqp: error" not in err

    expected = {
        "dense": "",
        "wanda:p=0.5": "P",
        "rtn:w=4,a=4,kv=4 > wanda:p=0.5": "Q>P",
        "wanda:p=0.5 > rtn:w=4,a=4,kv=4": "P>Q",  # the reversed order, from --both-orders
    }
    payload = json.loads(out_json.read_text())
    results = payload["results"]
    assert [r["recipe"] for r in results] == list(expected)  # dense first, the reversed order last
    assert payload["settings"]["seqlen"] == 32 and payload["settings"]["calib_samples"] == 4
    assert payload["model_fingerprint"]
    for r in results:
        assert r["order"] == expected[r["recipe"]]
        assert math.isfinite(r["ppl"]) and r["ppl"] > 1.0
        assert r["perplexity"]["windows"] == 4 and r["perplexity"]["seqlen"] == 32
        achieved = r["achieved"]
        if "wanda" in r["recipe"]:
            assert achieved["sparsity"] == pytest.approx(0.5, abs=1e-9)
            assert r["requested"]["prune"] == pytest.approx(2.0)
        else:
            assert achieved["sparsity"] == 0.0
        if "rtn" in r["recipe"]:
            assert (achieved["w_bits"], achieved["a_bits"], achieved["kv_bits"]) == (4, 4, 4)
            assert achieved["total"] == pytest.approx(8.0)
        else:
            assert achieved["w_bits"] is None and achieved["a_bits"] is None and achieved["kv_bits"] is None

    assert out.startswith(f"model {run_args[2]}")
    for r in results:
        assert f"recipe     {r['recipe']}   [{r['order'] or 'dense'}," in out
        assert f"{r['ppl']:.4f}" in out
    assert out.count("\nperplexity ") == 4
    assert out.count("achieved   sparsity 0.5000") == 3
    assert out.count("W4 A4 KV4") == 2
    table = out[out.rindex("\nrecipe ") + 1:]  # the final table
    assert all(h in table.splitlines()[0] for h in ("recipe", "order", "C total", "ppl"))
    assert len([line for line in table.splitlines() if line.startswith(("dense", "wanda", "rtn"))]) == 4
    # A(Q→P) with its error and x, from the pruner alone and RTN's curve at 3, 4, 5, 6, 8 bits
    by = {r["recipe"]: r["ppl"] for r in results}
    line = next(line for line in out.splitlines() if line.startswith("A(Q→P) of wanda:p=0.5 and rtn:w=4,a=4,kv=4: "))
    a = by["wanda:p=0.5 > rtn:w=4,a=4,kv=4"] - by["rtn:w=4,a=4,kv=4 > wanda:p=0.5"]
    assert f"{a:+.4f} ± " in line and "x = C*_P − C_Q = " in line and "− 4 = " in line and "3, 4, 5, 6, 8 bits" in line


def test_methods_lists_every_method_with_parameters(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("magnitude", "wanda", "rtn"):
        assert any(line.startswith(name) for line in out.splitlines())
    assert "p (a float in [0, 1))" in out and "nm (" in out and "w (an integer 2..16, or none)" in out


@pytest.mark.parametrize("command", ["methods", "models", "corpora"])
def test_listings_fit_120_columns(capsys, command):
    assert main([command]) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) <= 120


def test_dense_alone_measures_the_dense_model(run_args, capsys):
    assert main(run_args + ["--dense"]) == 0
    out = capsys.readouterr().out
    assert "recipe     dense" in out and out.count("recipe     ") == 1


def test_models_lists_the_embedded_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and ".gguf" in out


def test_corpora_lists_every_corpus(capsys):
    assert main(["corpora"]) == 0
    out = capsys.readouterr().out
    for name in ("pydoc", "austen", "wikitext2", "PATH.txt"):
        assert name in out


def test_version_and_missing_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    assert "command" in error_line(main([]), capsys.readouterr().err)  # argparse's errors are our one line too


def test_no_progress_error_is_the_only_stderr_output(run_args, capsys):
    rc = main(run_args + ["--seqlen", "300", "--recipe", "wanda:p=0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.splitlines() == [error_line(rc, err)]


@pytest.fixture
def suite_file(tmp_path, model_dir, text_file) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"models: ['{model_dir}']\ncorpus: '{text_file}'\nseqlen: 32\ncalib_samples: 4\neval_tokens: 128\n"
                    "device: cpu\npruners: [magnitude]\nquantizers: [rtn]\nratios: [0.3]\nbits: [4, 8]\n"
                    "curve_bits: [4, 8]\nbootstrap: 50\n")
    return path


def test_run_suite_stores_reports_and_exports(suite_file, tmp_path, capsys):
    store, exported = tmp_path / "store.sqlite", tmp_path / "all.json"
    assert main(["run", "--suite", str(suite_file), "--store", str(store), "--no-progress", "--json", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "suite tiny" in out and "[8/8]" in out  # dense, magnitude, 2 curve points, 2 bits x 2 orders
    assert "Progressive Intensity Hypothesis" in out and "magnitude:p=0.3-rtn" in out
    rows = json.loads(exported.read_text())
    assert len(rows) == 8 and {r["recipe"] for r in rows} >= {"dense", "rtn:w=4,a=4,kv=4 > magnitude:p=0.3"}
    assert all(math.isfinite(r["value"]) and len(r["details"]["window_nll"]) == 4 for r in rows)

    # a second run computes nothing and prints the same tables; --bits overrides the suite's grid
    assert main(["run", "--suite", str(suite_file), "--store", str(store), "--no-progress", "--bits", "8"]) == 0
    assert "[6/6]" in capsys.readouterr().out
    csv_path = tmp_path / "all.csv"
    assert main(["export", "--store", str(store), "--csv", str(csv_path)]) == 0
    assert len(csv_path.read_text().splitlines()) == 1 + 8


@pytest.mark.parametrize("extra, words", [
    (["--recipe", "dense"], ["--suite or --recipe"]),
    (["--bits", "1"], ["bit width 1", "2..16"]),
    (["--pruners", "rtn"], ["pruner 'rtn'", "accepted"]),
])
def test_bad_suite_runs_are_one_line_errors(suite_file, tmp_path, capsys, extra, words):
    rc = main(["run", "--suite", str(suite_file), "--store", str(tmp_path / "s.sqlite"), *extra])
    line = error_line(rc, capsys.readouterr().err)
    assert all(w in line for w in words), line


def test_run_without_recipe_or_suite_and_export_of_a_missing_store(tmp_path, capsys):
    assert "--recipe RECIPE" in error_line(main(["run"]), capsys.readouterr().err)
    assert "does not exist" in error_line(main(["export", "--store", str(tmp_path / "none.sqlite"), "--json", "x"]),
                                          capsys.readouterr().err)


def test_a_recipe_the_architecture_cannot_take_is_refused_before_the_weights_load(tmp_path, monkeypatch, capsys):
    """QuaRot on Gemma 3 (post-norms on the residual branch): refused from the config; nothing is loaded."""
    from conftest import char_tokenizer, tiny_gemma3

    from pqqp_bench import experiment

    folder = tmp_path / "gemma"
    tiny_gemma3().save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    monkeypatch.setattr(experiment, "load_model", lambda *a, **k: pytest.fail("the weights were loaded"))
    rc = main(["run", "--model", str(folder), "--recipe", "quarot > rtn:w=8", "--device", "cpu", "--seqlen", "32",
               "--eval-tokens", "64", "--calib-samples", "2", "--no-progress"])
    line = error_line(rc, capsys.readouterr().err)
    assert "quarot needs Llama-style pre-norm blocks" in line and "Gemma3DecoderLayer" in line


def test_a_llama_skeleton_takes_quarot(model_dir):
    from pqqp_bench.experiment import check_recipes
    from pqqp_bench.settings import Settings
    from pqqp_bench.spec import parse_recipe

    check_recipes(Settings(model=str(model_dir)), [parse_recipe("quarot > rtn:w=8")])  # no error
