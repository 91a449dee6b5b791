"""What every stored number carries: the fingerprint of the code that computes it, and the environment."""

from __future__ import annotations

from pathlib import Path

from pqqp_bench.environment import CODE, code_fingerprint, harness_identity, numbers_environment


def package(root: Path, body: str) -> Path:
    (root / "methods").mkdir(parents=True, exist_ok=True)
    (root / "methods" / "m.py").write_text(body)
    (root / "data.py").write_text("X = 1\n")
    return root


def test_code_fingerprint_follows_the_code_not_its_comments_or_docstrings(tmp_path: Path) -> None:
    parts = ("methods", "data.py")
    base = code_fingerprint(package(tmp_path / "a", 'def f(x):\n    return x + 1\n'), parts)
    documented = package(tmp_path / "b", '"""A module."""\n\n\ndef f(x):\n    """Adds one."""\n    # the successor\n'
                                          '    return x + 1\n')
    changed = package(tmp_path / "c", 'def f(x):\n    return x + 2\n')
    assert code_fingerprint(documented, parts) == base
    assert code_fingerprint(changed, parts) != base
    (tmp_path / "a" / "report.py").write_text("Y = 2\n")  # a module outside the computing parts
    assert code_fingerprint(tmp_path / "a", parts) == base


def test_the_package_fingerprint_covers_the_computing_modules() -> None:
    root = Path(__file__).resolve().parents[1] / "pqqp_bench"
    assert all((root / part).exists() for part in CODE)
    assert "methods" in CODE and "evaluate" in CODE and "data.py" in CODE and "report.py" not in CODE
    assert harness_identity("0.1.0", code_fingerprint()).startswith("0.1.0+code.") and len(code_fingerprint()) == 12


def test_numbers_environment_names_versions_and_kernels() -> None:
    env = numbers_environment()
    assert env["versions"]["torch"] and env["versions"]["transformers"] and env["cpu_capability"]
    assert "pqqp-bench" not in env["versions"]
