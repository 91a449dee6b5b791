"""The bad-input and fault battery: every bad input to the CLI, the pytest options, a suite YAML, a model, corpus,
store or baseline file, or lm-eval's `model_args` gets exit 2 (a pytest usage error: 4) and one line naming the bad
value and what is accepted, with no traceback, no silent accept, no input file modified and no stored row lost.
Faults (SIGINT, SIGKILL, a full disk, two processes on an empty cache, read-only paths) stop with one line and keep
every finished row.

Every case runs on the tiny Llama of `conftest.py` and fails before any real computing, so the battery stays fast.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import save_tiny_llama, write_corpus
from pqqp_bench.cli import main
from pqqp_bench.errors import PqqpError
from pqqp_bench.store import APPLICATION_ID, Measurement, MeasurementKey, Store


@dataclass
class Inputs:
    """The files a bad command is given beside its bad value: all must be unchanged after it fails."""

    root: Path
    model: Path
    corpus: Path
    store: Path
    suite: Path
    baseline: Path

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def run(self, *extra: str) -> list[str]:
        """`pqqp run` on the tiny model and corpus with small settings; later flags override these."""
        return ["run", "--model", str(self.model), "--corpus", str(self.corpus), "--device", "cpu", "--seqlen", "32",
                "--calib-samples", "4", "--eval-tokens", "128", "--no-progress", *extra]

    def suite_with(self, text: str) -> str:
        """A suite YAML: the tiny one with `text` appended (a later key overrides nothing: duplicates are refused)."""
        return self.write("bad-suite.yaml", text)


def key(recipe: str = "dense") -> MeasurementKey:
    return MeasurementKey(model="tiny", model_hash="0" * 16, corpus="text:0", split="s", recipe=recipe,
                          recipe_key="0" * 16, metric="ppl", seed=0, calibration="", harness_version="0.1.0")


TINY_SUITE = ("models: ['{model}']\ncorpus: '{corpus}'\nseqlen: 32\ncalib_samples: 4\neval_tokens: 128\ndevice: cpu\n"
              "pruners: [magnitude]\nquantizers: [rtn]\nratios: [0.3]\nbits: [4, 8]\ncurve_bits: [4, 8]\nbootstrap: 50\n")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """The tiny model, built once for the module (read-only to every case)."""
    root = tmp_path_factory.mktemp("shared")
    return save_tiny_llama(root / "tiny-llama")


@pytest.fixture
def inputs(tmp_path, shared, monkeypatch) -> Inputs:
    monkeypatch.setenv("PQQP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "in"
    root.mkdir()
    corpus = write_corpus(root / "corpus.txt")
    store = root / "store.sqlite"
    with Store(store) as s:
        s.put(Measurement(key(), 10.0, {"seconds": {}}))
    s.close()
    con = sqlite3.connect(store)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    suite = root / "tiny.yaml"
    suite.write_text(TINY_SUITE.format(model=shared, corpus=corpus))
    baseline = root / "baseline.json"
    baseline.write_text(json.dumps({"format": "pqqp-baseline/2"}))
    return Inputs(root, shared, corpus, store, suite, baseline)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (lock files aside) with the sha256 of its content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".locks" not in p.parts}


def one_error_line(rc: int | None, err: str) -> str:
    """The single `pqqp: error:` line of a failed command: exit 2, no traceback, the last line printed."""
    assert "Traceback" not in err, err
    assert rc == 2, f"exit {rc}: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("pqqp: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def call(argv: list[str]) -> int | None:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors exit through SystemExit
        return exc.code


Case = tuple[str, Callable[[Inputs], list[str]], tuple[str, ...]]

CLI_CASES: list[Case] = [
    # --- pqqp run: settings
    ("run-seqlen-zero", lambda i: i.run("--seqlen", "0", "--recipe", "dense"), ("seqlen", "0")),
    ("run-seqlen-negative", lambda i: i.run("--seqlen", "-5", "--recipe", "dense"), ("-5",)),
    ("run-seqlen-word", lambda i: i.run("--seqlen", "abc", "--recipe", "dense"), ("--seqlen", "'abc'")),
    ("run-seqlen-float", lambda i: i.run("--seqlen", "32.5", "--recipe", "dense"), ("--seqlen", "'32.5'")),
    ("run-calib-negative", lambda i: i.run("--calib-samples", "-1", "--recipe", "dense"), ("-1",)),
    ("run-eval-tokens-zero", lambda i: i.run("--eval-tokens", "0", "--recipe", "dense"), ("eval_tokens", "0")),
    ("run-eval-tokens-negative", lambda i: i.run("--eval-tokens", "-128", "--recipe", "dense"), ("-128",)),
    ("run-eval-tokens-below-seqlen", lambda i: i.run("--eval-tokens", "16", "--recipe", "dense"), ("16",)),
    ("run-holdout-zero", lambda i: i.run("--holdout", "0", "--recipe", "dense"), ("holdout", "(0, 1)")),
    ("run-holdout-nan", lambda i: i.run("--holdout", "nan", "--recipe", "dense"), ("holdout", "nan")),
    ("run-holdout-inf", lambda i: i.run("--holdout", "inf", "--recipe", "dense"), ("holdout", "inf")),
    ("run-batch-zero", lambda i: i.run("--batch-size", "0", "--recipe", "dense"), ("batch_size", "0")),
    ("run-batch-negative", lambda i: i.run("--batch-size", "-2", "--recipe", "dense"), ("-2",)),
    ("run-threads-zero", lambda i: i.run("--threads", "0", "--recipe", "dense"), ("--threads", "0")),
    ("run-threads-word", lambda i: i.run("--threads", "many", "--recipe", "dense"), ("--threads", "'many'")),
    ("run-seed-negative", lambda i: i.run("--seed", "-1", "--recipe", "dense"), ("seed", "-1")),
    ("run-seed-65-bits", lambda i: i.run("--seed", str(2 ** 64), "--recipe", "dense"), ("seed", str(2 ** 64))),
    ("run-bos-unknown", lambda i: i.run("--bos", "sometimes", "--recipe", "dense"), ("'sometimes'", "auto")),
    ("run-device-cuda-absent", lambda i: i.run("--device", "cuda", "--recipe", "dense"), ("cuda",)),
    ("run-device-cuda-index", lambda i: i.run("--device", "cuda:x", "--recipe", "dense"), ("'cuda:x'",)),
    ("run-prefix-cache-negative", lambda i: i.run("--prefix-cache", "-1", "--recipe", "dense"), ("prefix_cache", "-1")),
    ("run-prefix-cache-nan", lambda i: i.run("--prefix-cache", "nan", "--recipe", "dense"), ("prefix_cache", "nan")),
    ("run-prefix-cache-dir-file", lambda i: i.run("--prefix-cache-dir", str(i.corpus), "--recipe", "dense"),
     ("corpus.txt", "folder")),
    ("run-cache-dir-file", lambda i: i.run("--cache-dir", str(i.corpus), "--recipe", "dense"), ("corpus.txt", "folder")),
    ("run-schedule-unknown", lambda i: i.run("--schedule", "eager", "--recipe", "dense"), ("'eager'", "staged")),
    ("run-offload-unknown", lambda i: i.run("--offload", "gpu", "--recipe", "dense"), ("'gpu'", "disk")),
    ("run-unknown-flag", lambda i: i.run("--seqlenn", "32", "--recipe", "dense"), ("--seqlenn",)),
    ("run-json-missing-folder", lambda i: i.run("--recipe", "dense", "--json", str(i.path("no/such/out.json"))),
     ("no/such/out.json", "folder")),
    ("run-json-is-folder", lambda i: i.run("--recipe", "dense", "--json", str(i.root)), ("--json", "folder")),
    ("run-json-over-corpus", lambda i: i.run("--recipe", "dense", "--json", str(i.corpus)), ("corpus.txt", "input")),
    # --- pqqp run: the model
    ("model-empty-name", lambda i: i.run("--model", "", "--recipe", "dense"), ("model", "''")),
    ("model-empty-folder", lambda i: i.run("--model", str(i.path("empty-model")), "--recipe", "dense"), ("empty-model",)),
    ("model-config-not-json", lambda i: i.run("--model", broken_model(i, "config.json", b"{not json"), "--recipe",
                                                "dense"), ("config.json",)),
    ("model-weights-truncated", lambda i: i.run("--model", broken_model(i, "model.safetensors", None), "--recipe",
                                                  "dense"), ("model.safetensors",)),
    ("model-weights-random", lambda i: i.run("--model", broken_model(i, "model.safetensors", os.urandom(4096)),
                                               "--recipe", "dense"), ("model.safetensors",)),
    ("model-gguf-empty", lambda i: i.run("--model", i.write("empty.gguf", b""), "--recipe", "dense"), ("empty.gguf",)),
    ("model-gguf-text", lambda i: i.run("--model", i.write("text.gguf", "hello"), "--recipe", "dense"), ("text.gguf",)),
    # --- pqqp run: the corpus
    ("corpus-nul-bytes", lambda i: i.run("--corpus", i.write("nul.txt", b"text\x00" * 2000), "--recipe", "dense"),
     ("nul.txt", "NUL")),
    ("corpus-not-utf8", lambda i: i.run("--corpus", i.write("latin.txt", b"caf\xe9 " * 2000), "--recipe", "dense"),
     ("latin.txt", "UTF-8")),
    ("corpus-random-bytes", lambda i: i.run("--corpus", i.write("random.txt", os.urandom(20000)), "--recipe", "dense"),
     ("random.txt",)),
    ("corpus-jsonl-bad-line", lambda i: i.run("--corpus", i.write("bad.jsonl", '{"text": "a b c"}\nnot json\n'),
                                                "--recipe", "dense"), ("bad.jsonl", "line 2")),
    ("corpus-jsonl-no-text", lambda i: i.run("--corpus", i.write("notext.jsonl", '{"body": "a b c"}\n'), "--recipe",
                                               "dense"), ("notext.jsonl", "text")),
    ("corpus-jsonl-text-number", lambda i: i.run("--corpus", i.write("num.jsonl", '{"text": 5}\n'), "--recipe",
                                                   "dense"), ("num.jsonl", "text")),
    ("corpus-folder", lambda i: i.run("--corpus", str(i.root), "--recipe", "dense"), ("corpus",)),
    ("corpus-too-short", lambda i: i.run("--corpus", i.write("short.txt", "a few words only"), "--recipe", "dense"),
     ("'short'", "calibration")),
    ("corpus-whitespace-only", lambda i: i.run("--corpus", i.write("blank.txt", " \n\t " * 500), "--recipe", "dense"),
     ("blank.txt",)),
    # --- pqqp run: recipes
    ("recipe-empty", lambda i: i.run("--recipe", ""), ("recipe", "''")),
    ("recipe-blank", lambda i: i.run("--recipe", "   "), ("recipe",)),
    ("recipe-double-arrow", lambda i: i.run("--recipe", "wanda:p=0.5 > > rtn:w=4"), ("wanda:p=0.5 > > rtn:w=4",)),
    ("recipe-unknown-param", lambda i: i.run("--recipe", "wanda:q=0.5"), ("q", "wanda")),
    ("recipe-repeated-param", lambda i: i.run("--recipe", "wanda:p=0.1,p=0.2"), ("p", "twice")),
    ("recipe-param-word", lambda i: i.run("--recipe", "wanda:p=abc"), ("p='abc'",)),
    ("recipe-param-nan", lambda i: i.run("--recipe", "wanda:p=nan"), ("p='nan'",)),
    ("recipe-bits-float", lambda i: i.run("--recipe", "rtn:w=4.5"), ("w='4.5'",)),
    ("recipe-group-word", lambda i: i.run("--recipe", "rtn:w=4,g=abc"), ("g='abc'",)),
    ("recipe-group-negative", lambda i: i.run("--recipe", "rtn:w=4,g=-64"), ("g='-64'",)),
    ("recipe-nm-word", lambda i: i.run("--recipe", "wanda:nm=2:x"), ("nm='2:x'",)),
    ("recipe-non-ascii-method", lambda i: i.run("--recipe", "wända:p=0.5"), ("wända",)),
    ("recipe-missing-value", lambda i: i.run("--recipe", "wanda:p="), ("p",)),
    ("recipe-stacked-pruners-reach-one", lambda i: i.run("--recipe", "magnitude:p=0.5 > wanda:p=0.5"),
     ("magnitude:p=0.5 > wanda:p=0.5", "1")),
    ("recipe-thousand-stages", lambda i: i.run("--recipe", " > ".join(["rtn:w=8"] * 1000)), ("1000 stages",)),
    ("recipe-rotation-after-pruner", lambda i: i.run("--recipe", "wanda:p=0.3 > quarot"), ("quarot", "rotations first")),
    ("recipe-sleb-all-blocks", lambda i: i.run("--recipe", "sleb:p=0.99"), ("sleb",)),
    ("run-ray-without-suite", lambda i: i.run("--recipe", "dense", "--ray"), ("--ray", "--suite")),
    ("run-suite-and-recipe", lambda i: ["run", "--suite", str(i.suite), "--recipe", "dense"], ("--suite", "--recipe")),
    # --- pqqp run --suite: the suite file
    ("suite-missing", lambda i: ["run", "--suite", str(i.path("none.yaml"))], ("none.yaml", "does not exist")),
    ("suite-folder", lambda i: ["run", "--suite", str(i.root)], ("suite",)),
    ("suite-binary", lambda i: ["run", "--suite", i.write("bin.yaml", os.urandom(512) + b"\x00")], ("bin.yaml",)),
    ("suite-empty", lambda i: ["run", "--suite", i.write("empty.yaml", "")], ("empty.yaml",)),
    ("suite-list", lambda i: ["run", "--suite", i.write("list.yaml", "- a\n- b\n")], ("list.yaml", "mapping")),
    ("suite-syntax", lambda i: ["run", "--suite", i.write("syntax.yaml", "models: [a\n")], ("syntax.yaml", "YAML")),
    ("suite-unknown-key", lambda i: ["run", "--suite", suite_plus(i, "seqlenn: 32\n")], ("'seqlenn'",)),
    ("suite-duplicate-key", lambda i: ["run", "--suite", suite_plus(i, "seqlen: 64\n")], ("seqlen", "twice")),
    ("suite-seqlen-word", lambda i: ["run", "--suite", suite_with(i, seqlen="abc")], ("seqlen", "'abc'")),
    ("suite-seqlen-list", lambda i: ["run", "--suite", suite_with(i, seqlen="[1, 2]")], ("seqlen",)),
    ("suite-seqlen-bool", lambda i: ["run", "--suite", suite_with(i, seqlen="true")], ("seqlen", "True")),
    ("suite-seqlen-float", lambda i: ["run", "--suite", suite_with(i, seqlen="32.5")], ("seqlen", "32.5")),
    ("suite-ratios-word", lambda i: ["run", "--suite", suite_with(i, ratios="x")], ("ratios",)),
    ("suite-ratio-one", lambda i: ["run", "--suite", suite_with(i, ratios="[1.0]")], ("p='1'", "[0, 1)")),
    ("suite-ratio-nan", lambda i: ["run", "--suite", suite_with(i, ratios="[.nan]")], ("nan",)),
    ("suite-bits-zero", lambda i: ["run", "--suite", suite_with(i, bits="[0]")], ("0", "2..16")),
    ("suite-bits-float", lambda i: ["run", "--suite", suite_with(i, bits="[4.5]")], ("4.5",)),
    ("suite-pruners-number", lambda i: ["run", "--suite", suite_with(i, pruners="5")], ("'5'", "accepted")),
    ("suite-pruner-unknown", lambda i: ["run", "--suite", suite_with(i, pruners="[nosuch]")], ("'nosuch'",)),
    ("suite-models-mapping", lambda i: ["run", "--suite", suite_with(i, models="{}")], ("models",)),
    ("suite-models-empty", lambda i: ["run", "--suite", suite_with(i, models="[]")], ("models", "empty")),
    ("suite-seed-65-bits", lambda i: ["run", "--suite", suite_plus(i, f"seeds: [{2 ** 64}]\n")], (str(2 ** 64),)),
    ("suite-seed-negative", lambda i: ["run", "--suite", suite_plus(i, "seeds: [-3]\n")], ("-3",)),
    ("suite-seed-word", lambda i: ["run", "--suite", suite_plus(i, "seeds: [a]\n")], ("seeds",)),
    ("suite-noise-nan", lambda i: ["run", "--suite", suite_plus(i, "noise_sigmas: .nan\n")], ("noise_sigmas", "nan")),
    ("suite-noise-negative", lambda i: ["run", "--suite", suite_plus(i, "noise_sigmas: -1\n")], ("noise_sigmas", "-1")),
    ("suite-level-zero", lambda i: ["run", "--suite", suite_plus(i, "level: 0\n")], ("level", "0")),
    ("suite-level-big", lambda i: ["run", "--suite", suite_plus(i, "level: 1.5\n")], ("level", "1.5")),
    ("suite-kernel-noise-negative", lambda i: ["run", "--suite", suite_plus(i, "kernel_noise: -0.1\n")],
     ("kernel_noise", "-0.1")),
    ("suite-eval-below-seqlen", lambda i: ["run", "--suite", suite_with(i, eval_tokens="10")], ("eval_tokens", "10")),
    ("suite-order-unknown", lambda i: ["run", "--suite", suite_plus(i, "orders: ['X>Y']\n")], ("'X>Y'",)),
    ("suite-max-ppl-ratio-zero", lambda i: ["run", "--suite", suite_plus(i, "max_ppl_ratio: 0\n")], ("max_ppl_ratio",)),
    ("suite-metric-unknown", lambda i: ["run", "--suite", suite_plus(i, "metric: bleu\n")], ("'bleu'",)),
    ("suite-corpus-number", lambda i: ["run", "--suite", suite_with(i, corpus="7")], ("corpus",)),
    ("suite-quantize-unknown", lambda i: ["run", "--suite", suite_plus(i, "quantize: [z]\n")], ("'z'",)),
    ("suite-bootstrap-zero", lambda i: ["run", "--suite", suite_with(i, bootstrap="0")], ("bootstrap",)),
    ("suite-store-json-same", lambda i: ["run", "--suite", str(i.suite), "--store", str(i.store), "--json",
                                         str(i.store)], ("store.sqlite", "--json")),
    ("suite-json-missing-folder", lambda i: ["run", "--suite", str(i.suite), "--store", str(i.path("new.sqlite")),
                                             "--json", str(i.path("no/such/x.json"))], ("no/such/x.json",)),
    ("suite-store-is-corpus", lambda i: ["run", "--suite", str(i.suite), "--store", str(i.corpus)], ("corpus.txt",)),
    # --- pqqp export / import
    ("export-json-over-store", lambda i: ["export", "--store", str(i.store), "--json", str(i.store)],
     ("store.sqlite", "--json")),
    ("export-csv-over-store", lambda i: ["export", "--store", str(i.store), "--csv", str(i.store)],
     ("store.sqlite", "--csv")),
    ("export-json-and-csv-same", lambda i: ["export", "--store", str(i.store), "--json", str(i.path("x")), "--csv",
                                            str(i.path("x"))], ("--json", "--csv")),
    ("export-json-missing-folder", lambda i: ["export", "--store", str(i.store), "--json", str(i.path("no/x.json"))],
     ("no/x.json", "folder")),
    ("export-json-is-folder", lambda i: ["export", "--store", str(i.store), "--json", str(i.root)], ("--json",)),
    ("export-nothing-asked", lambda i: ["export", "--store", str(i.store)], ("--json", "--csv")),
    ("export-store-text", lambda i: ["export", "--store", i.write("text.sqlite", "x" * 200), "--json", "out.json"],
     ("text.sqlite", "SQLite")),
    ("export-store-other-app", lambda i: ["export", "--store", other_sqlite(i), "--json", "out.json"],
     ("other.sqlite", "another application")),
    ("export-store-unknown-layout", lambda i: ["export", "--store", our_id_unknown_layout(i), "--json", "out.json"],
     ("layout.sqlite", "layout")),
    ("export-store-truncated", lambda i: ["export", "--store", truncated_store(i), "--json", "out.json"],
     ("truncated.sqlite",)),
    ("import-missing-file", lambda i: ["import", str(i.path("none.json")), "--store", str(i.store)], ("none.json",)),
    ("import-not-json", lambda i: ["import", i.write("bad.json", "{"), "--store", str(i.store)], ("bad.json", "JSON")),
    ("import-object", lambda i: ["import", i.write("obj.json", "{}"), "--store", str(i.store)], ("obj.json", "list")),
    ("import-bad-record", lambda i: ["import", i.write("rec.json", "[1]"), "--store", str(i.store)], ("record 0",)),
    ("import-file-is-store", lambda i: ["import", str(i.store), "--store", str(i.store)], ("store.sqlite",)),
    ("import-store-folder", lambda i: ["import", export_of(i), "--store", str(i.root)], ("directory",)),
    # --- pqqp leaderboard / gate
    ("leaderboard-out-is-file", lambda i: ["leaderboard", "--suite", str(i.suite), "--store", str(i.store), "--out",
                                           str(i.corpus)], ("corpus.txt", "folder")),
    ("leaderboard-missing-store", lambda i: ["leaderboard", "--suite", str(i.suite), "--store", str(i.path("no.sqlite")),
                                             "--out", str(i.path("board"))], ("no.sqlite", "does not exist")),
    ("leaderboard-missing-suite", lambda i: ["leaderboard", "--suite", str(i.path("no.yaml")), "--store", str(i.store),
                                             "--out", str(i.path("board"))], ("no.yaml",)),
    ("gate-missing-baseline", lambda i: gate(i, "--baseline", str(i.path("none.json"))), ("none.json", "does not exist")),
    ("gate-baseline-not-json", lambda i: gate(i, "--baseline", i.write("b.json", "{")), ("b.json", "JSON")),
    ("gate-baseline-format", lambda i: gate(i, "--baseline", i.write("f.json", '{"format": "x"}')), ("format", "'x'")),
    ("gate-baseline-folder", lambda i: gate(i, "--baseline", str(i.root)), ("baseline",)),
    ("gate-baseline-binary", lambda i: gate(i, "--baseline", i.write("bin.json", os.urandom(300))), ("bin.json",)),
    ("gate-rel-tol-nan", lambda i: gate(i, "--rel-tol", "nan"), ("rel_tol", "nan")),
    ("gate-rel-tol-negative", lambda i: gate(i, "--rel-tol", "-0.1"), ("rel_tol", "-0.1")),
    ("gate-noise-inf", lambda i: gate(i, "--noise-sigmas", "inf"), ("noise_sigmas", "inf")),
    ("gate-kernel-noise-negative", lambda i: gate(i, "--kernel-noise", "-1"), ("kernel_noise", "-1")),
    ("gate-min-recovery-two", lambda i: gate(i, "--min-recovery", "2"), ("min_recovery", "2")),
    ("gate-update-over-store", lambda i: gate(i, "--baseline", str(i.store), "--update-baseline"),
     ("store.sqlite", "baseline")),
    ("gate-update-over-suite", lambda i: gate(i, "--baseline", str(i.suite), "--update-baseline"),
     ("tiny.yaml", "baseline")),
    # --- pqqp order
    ("order-methods-empty", lambda i: order(i, ""), ("empty",)),
    ("order-one-method", lambda i: order(i, "wanda:p=0.3"), ("at least 2",)),
    ("order-duplicate", lambda i: order(i, "wanda:p=0.3, wanda:p=0.3"), ("twice",)),
    ("order-reference-unknown", lambda i: order(i, "wanda:p=0.3, rtn:w=4", "--reference", "nosuch"), ("'nosuch'",)),
    ("order-curve-bits-words", lambda i: order(i, "wanda:p=0.3, rtn:w=4", "--curve-bits", "a,b"), ("curve_bits",)),
    ("order-curve-bits-zero", lambda i: order(i, "wanda:p=0.3, rtn:w=4", "--curve-bits", "0"), ("0", "2..16")),
    ("order-seqlen-zero", lambda i: order(i, "wanda:p=0.3, rtn:w=4", "--seqlen", "0"), ("seqlen", "0")),
    ("order-eval-tokens-zero", lambda i: order(i, "wanda:p=0.3, rtn:w=4", "--eval-tokens", "0"), ("eval_tokens", "0")),
    ("order-batch-zero", lambda i: order(i, "wanda:p=0.3, rtn:w=4", "--batch-size", "0"), ("batch_size", "0")),
    ("order-calib-zero", lambda i: order(i, "wanda:p=0.3, rtn:w=4", "--calib-samples", "0"), ("calib_samples", "0")),
    # --- the command itself
    ("no-command", lambda i: [], ("command",)),
    ("unknown-command", lambda i: ["compress"], ("'compress'",)),
]


def suite_with(inputs: Inputs, **values: str) -> str:
    """The tiny suite with some keys' values replaced (YAML text)."""
    lines = []
    for line in inputs.suite.read_text().splitlines():
        name = line.split(":")[0]
        lines.append(f"{name}: {values.pop(name)}" if name in values else line)
    lines += [f"{k}: {v}" for k, v in values.items()]
    return inputs.suite_with("\n".join(lines) + "\n")


def suite_plus(inputs: Inputs, text: str) -> str:
    return inputs.suite_with(inputs.suite.read_text() + text)


def gate(inputs: Inputs, *extra: str) -> list[str]:
    given = list(extra)
    if "--baseline" not in given:
        given += ["--baseline", str(inputs.baseline)]
    return ["gate", "--suite", str(inputs.suite), "--store", str(inputs.store), *given]


def order(inputs: Inputs, methods: str, *extra: str) -> list[str]:
    return ["order", "--methods", methods, "--model", str(inputs.model), "--corpus", str(inputs.corpus),
            "--store", str(inputs.path("order.sqlite")), "--no-progress", "--device", "cpu", *extra]


def broken_model(inputs: Inputs, name: str, content: bytes | None) -> str:
    """A copy of the tiny model with one file replaced (None: cut to half its size)."""
    folder = inputs.root / f"broken-{name}"
    folder.mkdir()
    for f in inputs.model.iterdir():
        data = f.read_bytes()
        if f.name == name:
            data = data[: len(data) // 2] if content is None else content
        (folder / f.name).write_bytes(data)
    return str(folder)


def other_sqlite(inputs: Inputs) -> str:
    path = inputs.path("other.sqlite")
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    return str(path)


def our_id_unknown_layout(inputs: Inputs) -> str:
    """An SQLite file with our application id but a table layout no harness wrote."""
    path = inputs.path("layout.sqlite")
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute("PRAGMA user_version = 1")
    con.execute("CREATE TABLE measurements (x)")
    con.commit()
    con.close()
    return str(path)


def truncated_store(inputs: Inputs) -> str:
    data = inputs.store.read_bytes()
    path = inputs.path("truncated.sqlite")
    path.write_bytes(data[: len(data) // 2 + 100])
    return str(path)


def export_of(inputs: Inputs) -> str:
    path = inputs.path("export.json")
    with Store(inputs.store) as s:
        s.export_json(path)
    return str(path)


@pytest.mark.parametrize("build, words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_cli_input_is_one_line_and_changes_nothing(inputs, capsys, build, words):
    argv = build(inputs)
    before = snapshot(inputs.root)
    rc = call(argv)
    out, err = capsys.readouterr()
    line = one_error_line(rc, err)
    for word in words:
        assert word in line, line
    assert "recipe     " not in out  # nothing was computed
    assert snapshot(inputs.root) == before, "an input file was changed or created"


def test_the_battery_covers_at_least_a_hundred_inputs():
    assert len({c[0] for c in CLI_CASES}) == len(CLI_CASES) >= 100


# --- the pytest options: a usage error (exit 4) in one line, before any case runs ------------------------------

PYTEST_CASES: list[Case] = [
    ("pytest-seqlen-word", lambda i: ["--pqqp-seqlen", "abc"], ("seqlen", "'abc'")),
    ("pytest-seqlen-zero", lambda i: ["--pqqp-seqlen", "0"], ("seqlen", "0")),
    ("pytest-suite-missing", lambda i: ["--pqqp-suite", str(i.path("none.yaml"))], ("none.yaml", "does not exist")),
    ("pytest-level-two", lambda i: ["--pqqp-level", "2"], ("level",)),
    ("pytest-bos-unknown", lambda i: ["--pqqp-bos", "x"], ("bos", "'x'")),
    ("pytest-ratios-above-one", lambda i: ["--pqqp-ratios", "1.5"], ("1.5",)),
    ("pytest-kernel-noise-negative", lambda i: ["--pqqp-kernel-noise", "-1"], ("kernel_noise",)),
    ("pytest-gate-missing", lambda i: ["--pqqp-gate", str(i.path("none.json"))], ("none.json", "does not exist")),
    ("pytest-update-without-gate", lambda i: ["--pqqp-update-baseline"], ("--pqqp-gate",)),
    ("pytest-threads-zero", lambda i: ["--pqqp-threads", "0"], ("threads",)),
    ("pytest-store-is-text", lambda i: ["--pqqp-store", str(i.corpus)], ("corpus.txt", "SQLite")),
    ("pytest-seed-65-bits", lambda i: ["--pqqp-seed", str(2 ** 64)], (str(2 ** 64),)),
]

GRID_TEST = "def test_case(pqqp_case, pqqp_bench):\n    pqqp_bench.measure(pqqp_case.model, pqqp_case.recipe)\n"


@pytest.mark.parametrize("build, words", [c[1:] for c in PYTEST_CASES], ids=[c[0] for c in PYTEST_CASES])
def test_bad_pytest_option_is_a_one_line_usage_error(inputs, pytester, build, words):
    pytester.makepyfile(test_grid=GRID_TEST)
    given = build(inputs)
    suite = [] if "--pqqp-suite" in given else ["--pqqp-suite", str(inputs.suite)]
    store = [] if "--pqqp-store" in given else ["--pqqp-store", str(inputs.path("grid.sqlite"))]
    before = snapshot(inputs.root)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *suite, *store, *given)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    err = result.stderr.str()
    assert "Traceback" not in err + result.stdout.str()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: pqqp:"), err
    for word in words:
        assert word in lines[0], lines[0]
    assert snapshot(inputs.root) == before


# --- lm-eval's model_args ---------------------------------------------------------------------------------------

LMEVAL_CASES = [
    ("unquoted-recipe", "recipe=rtn:w=8,a=8,kv=8", ("'a'", "quote")),
    ("misspelt-key", "recpie=rtn:w=8", ("'recpie'", "accepted")),
    ("trust-remote-code-word", "trust_remote_code=no", ("trust_remote_code='no'", "true or false")),
    ("seqlen-word", "seqlen=abc", ("seqlen='abc'", "integer")),
    ("seqlen-zero", "seqlen=0", ("seqlen=0",)),
    ("holdout-word", "holdout=most", ("holdout='most'",)),
    ("bad-recipe", "recipe=nosuch", ("'nosuch'", "accepted")),
    ("bad-model", "pretrained=/no/such/model", ("/no/such/model",)),
    ("bos-unknown", "bos=sometimes", ("'sometimes'",)),
]


@pytest.mark.parametrize("args, words", [c[1:] for c in LMEVAL_CASES], ids=[c[0] for c in LMEVAL_CASES])
def test_bad_lm_eval_model_args_are_one_line(inputs, capsys, args, words):
    pytest.importorskip("lm_eval")
    from lm_eval.api.registry import get_model

    import pqqp_bench_lmeval

    pqqp_bench_lmeval.register()
    with pytest.raises(PqqpError) as exc:
        get_model("pqqp").create_from_arg_string(args, {"batch_size": 1, "max_batch_size": None, "device": None})
    line = str(exc.value)
    assert "\n" not in line
    for word in words:
        assert word in line, line


def test_lm_eval_command_with_a_bad_recipe_is_one_line(inputs, capsys):
    pytest.importorskip("lm_eval")
    rc = call(["lm-eval", "run", "--model", "pqqp", "--model_args", f"pretrained={inputs.model}", "recipe=nosuch",
               "--tasks", "pqqp_cloze", "--device", "cpu"])
    line = one_error_line(rc, capsys.readouterr().err)
    assert "'nosuch'" in line


# --- faults: SIGINT, a full disk, read-only paths, two processes on an empty cache, a corrupt cache entry ---------

def stored(path: Path) -> list[tuple[str, float]]:
    with Store(path) as s:
        return [(m.key.recipe, m.value) for m in s.query()]


INTERRUPTED_AFTER_TWO_ROWS = """
import os, signal, sys
from pqqp_bench import store
real, stored = store.Store.put, []


def put(self, measurement, **kw):  # Ctrl-C arrives once two rows are stored, whatever the machine's speed
    done = real(self, measurement, **kw)
    stored.append(measurement)
    if len(stored) == 2:
        os.kill(os.getpid(), signal.SIGINT)
    return done


store.Store.put = put
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with SIGINT ignored: not here
if sys.argv[1] == "pytest":
    import pytest
    sys.exit(pytest.main(sys.argv[2:]))
from pqqp_bench.cli import main
sys.exit(main(sys.argv[2:]))
"""


def interrupted(argv: list[str], **kw) -> subprocess.CompletedProcess:
    """`pqqp ARGV` (or `pytest ARGV` where argv[0] is "pytest") in a new process that gets SIGINT right after its
    second stored row."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-c", INTERRUPTED_AFTER_TWO_ROWS, *argv], capture_output=True, text=True,
                          env=env, timeout=300, **kw)


def test_sigint_stops_with_one_line_and_keeps_every_finished_row(inputs, tmp_path):
    store = tmp_path / "grid.sqlite"
    argv = ["run", "--suite", str(inputs.suite), "--store", str(store), "--no-progress", "--threads", "1"]
    proc = interrupted(["pqqp", *argv])
    err = proc.stderr
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("pqqp: interrupted:") and sum(line.startswith("pqqp:") for line in lines) == 1, err
    kept = stored(store)
    assert len(kept) == 2
    # the same command resumes: the finished rows are reused as they are, the rest computed
    rerun = subprocess.run([sys.executable, "-m", "pqqp_bench.cli", *argv], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = dict(stored(store))
    assert len(after) == 8 and all(after[recipe] == value for recipe, value in kept)


def test_disk_full_while_storing_is_one_line_naming_the_lost_value(inputs, tmp_path, monkeypatch, capsys):
    """ENOSPC simulated where SQLite reports it: the row being written is named with its value in the error,
    every row stored before stays."""
    store = tmp_path / "grid.sqlite"
    real = Store.put
    writes: list[str] = []
    monkeypatch.setattr(Store, "put", lambda self, m, **kw: full_after(self, m, real, writes, **kw))
    rc = call(["run", "--suite", str(inputs.suite), "--store", str(store), "--no-progress"])
    line = one_error_line(rc, capsys.readouterr().err)
    assert "disk is full" in line and "is not stored" in line and "=" in line
    monkeypatch.undo()
    assert [r for r, _ in stored(store)] == writes


def full_after(store: Store, measurement: Measurement, real, writes: list, **kw) -> bool:
    """Store.put that meets a full disk (SQLite's OperationalError, turned into StoreError by the real put) once
    three rows are stored."""
    if len(writes) == 3:
        conn = store._conn
        store._conn = FullDisk(conn)
        try:
            return real(store, measurement, **kw)
        finally:
            store._conn = conn
    writes.append(measurement.key.recipe)
    return real(store, measurement, **kw)


class FullDisk:
    """A connection whose writes fail as SQLite's do on a full disk (SQLITE_FULL)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, *args):
        if sql.startswith("INSERT"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction


def test_disk_full_while_exporting_is_one_line_and_keeps_the_old_file(inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "all.json"
    out.write_text("[]\n")
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    rc = call(["export", "--store", str(inputs.store), "--json", str(out)])
    monkeypatch.setattr(os, "fsync", real)
    line = one_error_line(rc, capsys.readouterr().err)
    assert "No space left on device" in line
    assert out.read_text() == "[]\n" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".all")] == []


def test_read_only_store_folder_is_one_line(inputs, tmp_path, monkeypatch, capsys):
    """A folder the store cannot be created in (as a non-root user would meet after `chmod a-w`; simulated, since
    root ignores permissions)."""
    folder = tmp_path / "locked"
    real = Path.mkdir

    def mkdir(self, *a, **kw):
        if self == folder or folder in self.parents:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    rc = call(["run", "--suite", str(inputs.suite), "--store", str(folder / "s.sqlite"), "--no-progress"])
    line = one_error_line(rc, capsys.readouterr().err)
    assert "Permission denied" in line and "locked" in line


def test_two_processes_convert_one_gguf_into_an_empty_cache(tmp_path):
    from test_models import gguf_llama, write_gguf

    path = write_gguf(gguf_llama(seed=0), tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    code = f"from pqqp_bench.models import load_model; load_model({str(path)!r}, cache_dir={str(cache)!r})"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert [p.name for p in (cache / "models").iterdir()] == [f"tiny-{file_sha(path)[:12]}"]


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["truncated-weights", "corrupt-record", "missing-record", "missing-tokenizer"])
def test_a_damaged_cache_entry_is_converted_again(tmp_path, damage):
    from test_models import gguf_llama, write_gguf

    from pqqp_bench.models import cached_intact, load_model

    path = write_gguf(gguf_llama(seed=0), tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    first = load_model(str(path), cache_dir=cache)
    expected = {k: v.clone() for k, v in first.model.state_dict().items()}  # its weights are mapped from the file
    fingerprint = first.fingerprint
    del first
    folder = cache / "models" / f"tiny-{file_sha(path)[:12]}"
    weights = folder / "model.safetensors"
    if damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "corrupt-record":
        (folder / "pqqp.json").write_text("{not json")
    elif damage == "missing-record":
        (folder / "pqqp.json").unlink()
    else:
        (folder / "tokenizer.json").unlink()
    second = load_model(str(path), cache_dir=cache)
    assert second.fingerprint == fingerprint
    assert cached_intact(folder, file_sha(path))
    for name, value in second.model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_sigint_in_a_pytest_run_keeps_every_finished_row(inputs, tmp_path):
    """pytest reports the interrupt its own way (exit 2); the plugin adds one line saying the rows are kept."""
    store = tmp_path / "grid.sqlite"
    grid = Path(__file__).resolve().parents[1] / "suites" / "test_grid.py"
    proc = interrupted(["pytest", str(grid), "-p", "no:cacheprovider", "-q", "--pqqp-suite", str(inputs.suite),
                        "--pqqp-store", str(store), "--pqqp-threads", "1", "-k", "test_case"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert f"pqqp: interrupted: every measurement finished before is stored in {store}" in out
    assert len(stored(store)) == 2
