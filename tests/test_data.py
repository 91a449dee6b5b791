"""Corpora: position split, calibration sampling, evaluation windows, corpus sources and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pqqp_bench.catalog import AUSTEN_SUBDIR, austen_dir, available_corpora
from pqqp_bench.data import CORPORA, Corpus, load_corpus, load_texts, tokenize
from pqqp_bench.errors import PqqpError


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.strip() == message and message
    return message


def numbered_corpus(calibration: int = 1000, evaluation: int = 200) -> Corpus:
    """Every token id is its position, so a window says where it came from and which part it belongs to."""
    ids = torch.arange(calibration + evaluation)
    return Corpus("numbered", "test", ids[:calibration], ids[calibration:], "test split")


# --- load_corpus: the position split ---------------------------------------------------------------------


@pytest.mark.parametrize("holdout", [0.2, 0.5, 0.05])
def test_load_corpus_splits_head_and_tail_without_overlap(text_file, tokenizer, holdout):
    corpus = load_corpus(str(text_file), tokenizer, holdout=holdout)
    full = tokenize(tokenizer, text_file.read_text())
    assert full.numel() == len(text_file.read_text())  # char tokenizer: one token per character
    cut = int(round(full.numel() * (1 - holdout)))
    assert corpus.calibration.numel() + corpus.evaluation.numel() == full.numel()
    assert corpus.calibration.numel() == cut
    assert torch.equal(corpus.calibration, full[:cut])
    assert torch.equal(corpus.evaluation, full[cut:])
    assert corpus.name == text_file.stem
    assert f"{full.numel()} tokens" in corpus.split


def test_load_corpus_evaluation_tail_does_not_depend_on_calibration_needs(text_file, tokenizer):
    corpus = load_corpus(str(text_file), tokenizer)
    first = corpus.evaluation_windows(32, 256)
    corpus.calibration_samples(16, 32, seed=3)
    corpus.calibration_samples(4, 64, seed=4)
    assert torch.equal(corpus.evaluation_windows(32, 256), first)


@pytest.mark.parametrize("holdout", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_load_corpus_rejects_holdout_outside_unit_interval(text_file, tokenizer, holdout):
    with pytest.raises(PqqpError) as exc:
        load_corpus(str(text_file), tokenizer, holdout=holdout)
    message = one_line(exc)
    assert f"holdout={holdout}" in message and "(0, 1)" in message


# --- calibration samples ------------------------------------------------------------------------------------


def test_calibration_samples_deterministic_per_seed_and_differ_across_seeds(text_file, tokenizer):
    corpus = load_corpus(str(text_file), tokenizer)
    a = corpus.calibration_samples(8, 32, seed=0)
    b = corpus.calibration_samples(8, 32, seed=0)
    c = corpus.calibration_samples(8, 32, seed=1)
    assert a.shape == (8, 32) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_calibration_samples_come_from_the_calibration_part(text_file, tokenizer):
    corpus = load_corpus(str(text_file), tokenizer)
    samples = corpus.calibration_samples(8, 32, seed=5)
    every_window = corpus.calibration.unfold(0, 32, 1)  # [L - 31, 32]: each contiguous window of the part
    for row in samples:
        assert (every_window == row).all(dim=1).any()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_calibration_samples_are_distinct_non_overlapping_windows(seed):
    corpus = numbered_corpus(calibration=1000, evaluation=200)
    samples = corpus.calibration_samples(20, 40, seed=seed)
    assert samples.shape == (20, 40)
    starts = samples[:, 0]
    for start, row in zip(starts.tolist(), samples):
        assert torch.equal(row, torch.arange(start, start + 40))  # one contiguous window
    assert int(samples.max()) < 1000  # never an evaluation token
    ordered = sorted(starts.tolist())
    assert len(set(ordered)) == 20
    assert all(b - a >= 40 for a, b in zip(ordered, ordered[1:]))  # no two windows share a token


def test_calibration_samples_can_take_every_window():
    corpus = numbered_corpus(calibration=1000)
    samples = corpus.calibration_samples(25, 40, seed=0)  # 1000 // 40 = 25 slots
    assert torch.equal(samples.flatten(), torch.arange(1000))


def test_calibration_samples_that_do_not_fit_give_one_line_error():
    corpus = numbered_corpus(calibration=1000)
    with pytest.raises(PqqpError) as exc:
        corpus.calibration_samples(26, 40, seed=0)
    message = one_line(exc)
    assert message.startswith("26 calibration samples of 40 tokens")
    assert "'numbered'" in message and "accepted n <= 25" in message


def test_calibration_samples_too_many_on_file_corpus(text_file, tokenizer):
    corpus = load_corpus(str(text_file), tokenizer)
    slots = corpus.calibration.numel() // 32
    with pytest.raises(PqqpError) as exc:
        corpus.calibration_samples(slots + 1, 32, seed=0)
    message = one_line(exc)
    assert str(slots + 1) in message and f"accepted n <= {slots}" in message


# --- evaluation windows -------------------------------------------------------------------------------------


def test_evaluation_windows_are_consecutive_from_the_start_of_the_tail():
    corpus = numbered_corpus(calibration=1000, evaluation=200)
    windows = corpus.evaluation_windows(32, 128)
    assert windows.shape == (4, 32)
    assert torch.equal(windows.flatten(), torch.arange(1000, 1128))
    assert corpus.evaluation_windows(32, 140).shape == (4, 32)  # a partial window is dropped
    assert torch.equal(corpus.evaluation_windows(32).flatten(), torch.arange(1000, 1000 + 6 * 32))


@pytest.mark.parametrize("tokens", [224, 10_000, 31])
def test_evaluation_windows_that_do_not_fit_give_one_line_error(tokens):
    corpus = numbered_corpus(calibration=1000, evaluation=200)
    with pytest.raises(PqqpError) as exc:
        corpus.evaluation_windows(32, tokens)
    message = one_line(exc)
    assert f"evaluation of {tokens} tokens" in message
    assert "accepted 32..192 tokens" in message


# --- corpus sources -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "   \n\n  \t\n"])
def test_empty_text_file_errors(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(PqqpError) as exc:
        load_texts(str(path))
    message = one_line(exc)
    assert str(path) in message and "empty" in message


def test_empty_text_file_errors_through_load_corpus(tmp_path, tokenizer):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(PqqpError, match="is empty"):
        load_corpus(str(path), tokenizer)


def test_jsonl_file_rows_are_read(tmp_path, tokenizer):
    path = tmp_path / "rows.jsonl"
    rows = [{"text": "first row of text"}, {"text": "second row", "meta": 1}, {"text": "third"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    texts = load_texts(str(path))
    assert texts.name == "rows"
    assert texts.text == "first row of text\n\nsecond row\n\nthird"
    corpus = load_corpus(str(path), tokenizer, holdout=0.5)
    full = tokenize(tokenizer, texts.text)
    assert torch.equal(torch.cat([corpus.calibration, corpus.evaluation]), full)


def test_unknown_corpus_name_lists_the_accepted_names():
    with pytest.raises(PqqpError) as exc:
        load_texts("shakespeare")
    message = one_line(exc)
    assert "'shakespeare'" in message
    for name in CORPORA:
        assert name in message
    assert ".txt" in message and ".jsonl" in message


def test_file_with_unsupported_suffix_errors(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(PqqpError) as exc:
        load_texts(str(path))
    message = one_line(exc)
    assert str(path) in message and "'.csv'" in message and ".txt" in message and ".jsonl" in message


def test_missing_corpus_file_errors(tmp_path):
    path = tmp_path / "nothing-here.txt"
    with pytest.raises(PqqpError) as exc:
        load_texts(str(path))
    message = one_line(exc)
    assert str(path) in message and "does not exist" in message


def test_pydoc_corpus_is_the_stdlib_topics_text():
    texts = load_texts("pydoc")
    assert texts.name == "pydoc"
    assert len(texts.text) > 400_000
    assert "stdlib" in texts.source


def test_austen_missing_says_how_to_get_it(tmp_path, monkeypatch):
    if (Path("/") / AUSTEN_SUBDIR / "Rdata.rdb").exists():
        pytest.skip("r-cran-janeaustenr is installed system-wide")
    monkeypatch.setenv("PQQP_AUSTEN_DIR", str(tmp_path))  # an extraction folder without the package
    monkeypatch.setenv("PQQP_CACHE_DIR", str(tmp_path / "cache"))  # nor one extracted into the cache
    assert austen_dir() is None
    with pytest.raises(PqqpError) as exc:
        load_texts("austen")
    message = one_line(exc)
    assert "austen" in message and "apt-get" in message and "r-cran-janeaustenr" in message
    assert "PQQP_AUSTEN_DIR" in message
    status = dict(available_corpora())["austen"]
    assert status.startswith("not available") and "PQQP_AUSTEN_DIR" in status


def test_austen_text_when_available():
    folder = austen_dir()
    if folder is None:
        pytest.skip("janeaustenr data not found: run scripts/setup.sh or set PQQP_AUSTEN_DIR")
    texts = load_texts("austen")
    assert len(texts.text) > 3_500_000
    assert "It is a truth universally acknowledged" in texts.text
    assert str(folder) in texts.source
    assert dict(available_corpora())["austen"].startswith("available")


# --- malformed input files give a PqqpError naming the file, not a traceback ---------------------------------


@pytest.mark.parametrize("content", ['{"text": "ok"}\nnot json\n', '{"body": "no text key"}\n'])
def test_malformed_jsonl_gives_pqqp_error(tmp_path, content):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(PqqpError) as exc:
        load_texts(str(path))
    assert str(path) in one_line(exc)


def test_non_utf8_text_file_gives_pqqp_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 ol\xe9".encode("latin-1"))
    with pytest.raises(PqqpError) as exc:
        load_texts(str(path))
    assert str(path) in one_line(exc)
