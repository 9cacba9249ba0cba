"""The tools' --help: what they list is what they accept, descriptions end where their
sentence ends, and nothing but the help is printed."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ovseg_testing import ROOT, load_demo_modules, load_script, subprocess_env

from ovseg.clip.templates import TEMPLATE_SETS
from ovseg.evaluation import synonym_study
from ovseg.vocab import builtin_vocabulary_names


def _help(main, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse's wrapping undone


def _dump(argv):
    return load_script("tools/dump_text_embeddings.py").main(argv)


def test_template_sets_and_builtin_vocabularies_are_all_listed(capsys):
    demo = _help(load_demo_modules()[1].main, capsys)
    dump = _help(_dump, capsys)
    listed = ", ".join(TEMPLATE_SETS)
    assert f"prompt templates: {listed} or a .json list" in demo, demo
    assert f"template set ({listed})" in dump, dump
    assert f"builtin name ({', '.join(builtin_vocabulary_names())})" in dump, dump


@pytest.mark.parametrize(
    "main, ends",
    [
        (lambda argv: load_script("tools/screenshot_app.py").main(argv), "screenshot of the page."),
        (synonym_study.main, "``tools/compare_synonym_merge.py``."),
    ],
    ids=["screenshot_app", "compare_synonym_merge"],
)
def test_descriptions_are_whole_sentences(main, ends, capsys):
    text = _help(main, capsys)
    description = text.split(" positional arguments:")[0].split(" options:")[0]
    assert description.endswith(ends), description


def test_visualize_dataset_help_prints_only_the_help():
    proc = subprocess.run(
        [sys.executable, "tools/visualize_dataset.py", "--help"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # was torch.jit's FutureWarning, before the help
