"""tools/compare_synonym_merge.py (ovseg.evaluation.synonym_study): a user's mistake stops the
study at once, in one error line, before five evaluations run."""

import pytest
from ovseg_testing import ROOT

from ovseg.evaluation.synonym_study import main

CONFIG = str(ROOT / "configs/toy/maskclip.yaml")


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["--config-file", "configs/toy/maskclp.yaml"],
            "'configs/toy/maskclp.yaml' does not exist",
        ),
        (["--weights", "run/model_fnal.pth"], "--weights run/model_fnal.pth is not a file"),
        (["--output", "."], "--output . is a folder; give a .json file name"),
        ([], "no toy world under DETECTRON2_DATASETS="),
    ],
)
def test_mistakes_stop_before_the_study(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "no_world"))
    monkeypatch.setattr(
        "ovseg.evaluation.synonym_study.study", lambda *a: pytest.fail("the study ran")
    )
    assert main(["--config-file", CONFIG, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compare_synonym_merge.py: error: ") and says in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_study_writes_its_rows_and_nothing_else(tmp_path, monkeypatch, capsys):
    """Five evaluations on a small toy world, run from another folder: the rows in the table
    and the json, and no evaluation file left in the working directory or ./output."""
    import json

    from ovseg_testing import registered_toy_world

    with registered_toy_world(tmp_path / "data", num_train=1, num_val=2):
        monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
        work = tmp_path / "work"
        work.mkdir()
        monkeypatch.chdir(work)
        assert main(["--config-file", CONFIG, "--output", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["synonyms"], r["merge"]) for r in rows] == [
        ("plain", "-"), ("caption words", "max"), ("caption words", "mean"),
        ("unknown words", "max"), ("unknown words", "mean"),
    ]  # fmt: skip
    assert all(0 <= r["mIoU"] <= 100 for r in rows)
    assert "| plain | - |" in capsys.readouterr().out
    assert list(work.iterdir()) == []
