"""The XPM row's helpers (ovseg/engine/demo_xpm.py): the mask AP read from metrics.json,
its world of the first N training images, the results table. The row end to end runs in
tests/tools/test_run_demo.py (make demo QUICK=1)."""

import json

import numpy as np
import pytest

from ovseg.engine.demo_results import xpm_markdown
from ovseg.engine.demo_xpm import XPM_DEMO, read_instance_metrics, xpm_world


def _metrics(path, *records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_reads_the_last_mask_evaluation(tmp_path):
    _metrics(
        tmp_path / "metrics.json",
        {"iteration": 9, "segm/AP": 1.0, "segm/AP-seen": 2.0, "segm/AP-unseen": 0.5},
        {"iteration": 10, "total_loss": 1.0},
        {"iteration": 19, "segm/AP": 3.0, "segm/AP-seen": 4.0, "segm/AP-unseen": 1.5,
         "segm/AP50-seen": 9.0, "segm/AP50-unseen": 6.0, "segm/AP-star": 1.0},
    )  # fmt: skip
    got = read_instance_metrics(tmp_path)
    assert got == {"AP": 3.0, "AP-seen": 4.0, "AP-unseen": 1.5, "AP50-seen": 9.0,
                   "AP50-unseen": 6.0}  # fmt: skip
    # several test sets: the first one's keys carry its name
    _metrics(tmp_path / "metrics.json", {"v/segm/AP": 2.0, "v/segm/AP-unseen": 1.0})
    assert read_instance_metrics(tmp_path)["AP-unseen"] == 1.0
    assert read_instance_metrics(tmp_path)["AP-seen"] is None
    _metrics(tmp_path / "metrics.json", {"iteration": 3, "total_loss": 1.0})
    with pytest.raises(RuntimeError, match="no mask AP"):
        read_instance_metrics(tmp_path)


def test_table_rows_and_missing_values():
    assert xpm_markdown({"lseg": {}}) == []
    runs = {"teacher": {"AP-seen": 20.0, "AP-unseen": 8.25, "AP50-unseen": float("nan")}}
    lines = xpm_markdown({"xpm": runs})
    assert "| student, caption pseudo-labels | toy CLIP | 20.0 | 8.2 | - | - | - |" in lines
    assert sum(line.startswith("| teacher (no pseudo-labels)") for line in lines) == 2


def test_world_of_the_first_training_images_has_the_same_images(tmp_path, monkeypatch):
    from PIL import Image

    from ovseg.data.datasets.toy_world import build_toy_world

    demo = tmp_path / "toy_world_default"
    build_toy_world(str(demo), num_train=6, num_val=3, seed=0)
    assert xpm_world(demo, "quick", 0, 3) == demo  # quick: the demo world itself
    monkeypatch.setitem(XPM_DEMO["default"], "num_train", 4)
    small = xpm_world(demo, "default", 0, 3)
    assert small != demo and small.name.endswith("_xpm4")
    for sub, count in (("images/training", 4), ("images/validation", 3)):
        names = sorted(p.name for p in (small / "toy_world" / sub).iterdir())
        assert len(names) == count and all((demo / "toy_world" / sub / n).exists() for n in names)
        for name in names:
            a = np.asarray(Image.open(small / "toy_world" / sub / name))
            b = np.asarray(Image.open(demo / "toy_world" / sub / name))
            assert np.array_equal(a, b), name
