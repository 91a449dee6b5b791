"""The GitHub Actions workflow users of the repository run: valid for GitHub, and doing what the README says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "ci.yml"


def test_workflow_is_valid_for_github_actions() -> None:
    """actionlint where installed (`pip install -e .[lint]`), else the workflow JSON schema (check-jsonschema)."""
    if shutil.which("actionlint"):
        command = ["actionlint", "-no-color", str(WORKFLOW)]
    elif shutil.which("check-jsonschema"):
        command = ["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)]
    else:
        pytest.skip("neither actionlint nor check-jsonschema is installed (pip install -e '.[test,lint]')")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_tests_gates_and_publishes_the_leaderboard() -> None:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["test"]["steps"]
    runs = [step.get("run", "") for step in steps]
    order = ["bash scripts/setup.sh", "python -m pytest tests/", "--pqqp-gate leaderboard/baseline.json",
             "pqqp leaderboard --suite suites/default.yaml"]
    found = [next(i for i, run in enumerate(runs) if text in run) for text in order]
    assert found == sorted(found), "set-up, tests, the gated suite, then the leaderboard"
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == "leaderboard/" and upload["if"] == "${{ !cancelled() }}"
