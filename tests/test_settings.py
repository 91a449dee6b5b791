"""One declaration per setting: `settings.KNOBS` gives the `pqqp` flags, the `--pqqp-*` options, the suite keys and
their defaults, and the README's option table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pqqp_bench.cli import build_parser
from pqqp_bench.errors import PqqpError
from pqqp_bench.pytest_plugin import grid_options
from pqqp_bench.settings import KNOBS, Settings, markdown_table
from pqqp_bench.suite import Suite

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_table_is_the_generated_one():
    assert markdown_table() in README.read_text()


def test_every_knob_is_a_setting_a_suite_key_a_flag_and_an_option():
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    suite = {f.name: f for f in dataclasses.fields(Suite)}
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # the `pqqp run` parser
    flags = {option for action in run._actions for option in action.option_strings}
    for knob in KNOBS:
        assert knob.name in fields and knob.key in suite
        assert grid_options()[knob.key] == knob.help
        assert knob.flag in flags
        default = suite[knob.key].default
        assert (default == (knob.default,)) if knob.suite_key else (default == knob.default), knob.name


@pytest.mark.parametrize("knob", [k for k in KNOBS if k.choices], ids=lambda k: k.name)
def test_a_choice_outside_the_knob_is_refused_everywhere(knob):
    with pytest.raises(PqqpError, match=knob.name):
        Settings(**{knob.name: "nonsense"})
    with pytest.raises(PqqpError, match="nonsense"):
        build_parser().parse_args(["run", knob.flag, "nonsense"])


def test_the_readme_table_of_grid_and_section_keys_is_the_generated_one():
    from pqqp_bench.sections import markdown_table as sections_table

    assert sections_table() in README.read_text()
