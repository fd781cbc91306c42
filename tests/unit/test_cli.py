"""The console scripts: --help answers without importing torch or megatron-core, and every flag
has a line of help that shows its default."""

import argparse
import subprocess
import sys

import pytest

from megatron_free import arguments
from megatron_free.convert import cli as convert_cli
from megatron_free.data import merge_datasets, preprocess, train_tokenizer
from megatron_free.inference import generate

# [project.scripts] of pyproject.toml
CONSOLE_SCRIPTS = {
    "megatron-free-convert-hf": "megatron_free.convert.cli",
    "megatron-free-pretrain": "megatron_free.pretrain",
    "megatron-free-preprocess": "megatron_free.data.preprocess",
    "megatron-free-train-tokenizer": "megatron_free.data.train_tokenizer",
    "megatron-free-generate": "megatron_free.inference.generate",
    "megatron-free-merge-datasets": "megatron_free.data.merge_datasets",
}
PARSERS = {
    "megatron-free-convert-hf": convert_cli.build_parser,
    "megatron-free-pretrain": arguments.build_parser,
    "megatron-free-preprocess": preprocess.build_parser,
    "megatron-free-train-tokenizer": train_tokenizer.build_parser,
    "megatron-free-generate": generate.build_parser,
    "megatron-free-merge-datasets": merge_datasets.build_parser,
}

# Runs the module as its console script does, then reports what --help had imported.
HELP_PROBE = """
import atexit, runpy, sys
sys.argv = [{script!r}, "--help"]
atexit.register(lambda: print("IMPORTED", sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "megatron"}})))
runpy.run_module({module!r}, run_name="__main__")
"""


@pytest.mark.parametrize("script", sorted(CONSOLE_SCRIPTS))
def test_help_exits_zero_without_torch_or_megatron(script):
    probe = HELP_PROBE.format(script=script, module=CONSOLE_SCRIPTS[script])
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"usage: {script}" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "IMPORTED []", result.stdout[-500:]


def test_every_console_script_is_checked():
    from pathlib import Path

    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(CONSOLE_SCRIPTS) | {"megatron-free-lm-eval"}


def test_lm_eval_help_imports_neither_torch_nor_the_model():
    """megatron-free-lm-eval is lm-eval's own command line (its flags, its help), with free_transformer
    registered lazily."""
    probe = HELP_PROBE.format(script="megatron-free-lm-eval", module="megatron_free.evaluation")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: lm-eval" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "IMPORTED []", result.stdout[-500:]


def _flags(parser: argparse.ArgumentParser):
    return [action for action in parser._actions if action.option_strings and action.dest != "help"]


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_every_flag_has_help_and_shows_its_default(script):
    parser = PARSERS[script]()
    formatter = parser._get_formatter()
    for action in _flags(parser):
        text = formatter._expand_help(action) if action.help else ""
        assert text.strip(), f"{script} {action.option_strings[0]} has no help"
        if action.nargs == 0 or action.default is None or action.default == []:
            continue  # a switch, or unset: the help says what happens then
        defaults = action.default if isinstance(action.default, list) else [action.default]
        for value in defaults:
            shown = {str(value), f"{value:g}"} if isinstance(value, float) else {str(value)}
            assert any(s in text for s in shown), (
                f"{script} {action.option_strings[0]}: default {value!r} not in {text!r}"
            )


def test_pretrain_help_names_the_free_transformer_defaults():
    text = arguments.build_parser().format_help()
    assert "(default: 16)" in text.split("--latent-bits LATENT_BITS")[1].split("--free-bits")[0]
    assert "(default: 0.5)" in text.split("--free-bits FREE_BITS")[1].split("--injection-layer")[0]


def test_usage_errors_are_argument_errors():
    """A bad value or an unknown flag raises ArgumentError (one line, once per job), not SystemExit."""
    with pytest.raises(arguments.ArgumentError, match=r"^argument --num-layers: invalid int value: 'x'"):
        arguments.parse_args(["--num-layers", "x"])
    with pytest.raises(arguments.ArgumentError, match=r"^unrecognized arguments: --bogus"):
        arguments.parse_args(["--toy-data", "--bogus"])
