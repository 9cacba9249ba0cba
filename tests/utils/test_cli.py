"""Config overrides on every command line: the tools that take them as trailing KEY VALUE
pairs (train_net.py's form) also take them after --opts (the demo's form), and the two that
take --opts name it when the overrides come without it."""

from __future__ import annotations

import pytest
from ovseg_testing import ROOT, load_demo_modules, load_script

from ovseg.convert import command as convert_command
from ovseg.evaluation import synonym_study

CONFIG = str(ROOT / "configs/toy/maskclip.yaml")
MISSPELT = ["MODEL.WEIGHT", "x.pth"]  # reaching the config, it is refused by name


def _dump(argv):
    return load_script("tools/dump_text_embeddings.py").main(argv)


def _benchmark(argv):
    bench = load_script("tools/benchmark.py")
    return bench.run_reporting_errors("benchmark.py", lambda: bench.main(argv))


TRAILING = {
    "dump_text_embeddings.py": (_dump, ["--vocabulary", "toy9", "--output", "t.pt"]),
    "convert_checkpoint.py": (
        convert_command.main,
        ["--method", "zegclip", "--input", "in.pth", "--output", "out.pth"],
    ),
    "compare_synonym_merge.py": (synonym_study.main, []),
    "benchmark.py": (_benchmark, []),
}


@pytest.mark.parametrize("tool", sorted(TRAILING))
@pytest.mark.parametrize("flag", [[], ["--opts"]], ids=["trailing", "after --opts"])
def test_trailing_overrides_also_follow_opts(tool, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main, argv = TRAILING[tool]
    command = ["infer"] if tool == "benchmark.py" else []  # its subcommand first
    try:
        status = main([*command, "--config-file", CONFIG, *argv, *flag, *MISSPELT])
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"{tool}: error: MODEL.WEIGHT (set in the overrides) is not a config key" in err, err


def _demo(argv):
    return load_demo_modules()[1].main(argv)


def _export(argv):
    return load_script("tools/export_onnx.py").main(argv)


@pytest.mark.parametrize(
    "main, argv",
    [
        (_demo, ["--input", "a.png", "--output", "out"]),
        (_export, ["--vocabulary", "a,b", "--output", "m.onnx"]),
    ],
)
def test_opts_flag_tools_name_it_for_bare_overrides(main, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--config-file", CONFIG, *argv, *MISSPELT])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "error: unrecognized arguments: MODEL.WEIGHT x.pth" in err, err  # prog: argv[0]
    assert "config overrides go after --opts in this tool: --opts MODEL.WEIGHT x.pth" in err, err


def test_a_misspelt_flag_is_still_refused_as_argparse_refuses_it(capsys):
    with pytest.raises(SystemExit):
        _demo(["--config-file", CONFIG, "--input", "a.png", "--output", "o", "--heatmapz"])
    err = capsys.readouterr().err
    assert "error: unrecognized arguments: --heatmapz" in err.splitlines()[-1]
    assert "--opts" not in err.splitlines()[-1]
