"""tools/plot_metrics.py, tools/visualize_dataset.py, tools/visualize_pseudo_labels.py and the
overlay drawing they share."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ovseg_testing import ROOT, make_store, run_main, subprocess_env
from PIL import Image

from detectron2.data import MetadataCatalog

from ovseg.data import dataset_views
from ovseg.utils import training_curves
from ovseg.utils.visualization import draw_semantic, vocabulary_metadata


def _command(tool: str):
    """``tools/<tool>.py`` run as a command: its exit status, its stderr echoed here (for
    capsys). It reads ADE20K where this process registered it last (the fixtures register a
    temporary copy). One test per tool runs it so; the others call ``main`` in this process."""

    def command(argv) -> int:
        ade = Path(MetadataCatalog.get("ade20k_sem_seg_val").image_root).parents[2]
        run = dict(cwd=ROOT, env=subprocess_env(ade), capture_output=True, text=True, timeout=300)
        proc = subprocess.run([sys.executable, f"tools/{tool}.py", *argv], **run)
        sys.stderr.write(proc.stderr)
        return proc.returncode

    return command


def _tool(tool: str, module) -> SimpleNamespace:
    """The package module behind a tool, its ``main(argv)`` imported into this process
    (``run_main``: stderr and exit status as the command's) and the tool as a command."""

    def main(argv) -> int:
        return run_main(f"tools/{tool}.py", argv)

    return SimpleNamespace(**vars(module), main=main, command=_command(tool))


plot_metrics = _tool("plot_metrics", training_curves)
visualize_dataset = _tool("visualize_dataset", dataset_views)
visualize_pseudo_labels = _tool("visualize_pseudo_labels", dataset_views)

VAL0 = "ADE_val_00000000"
GRASS = 9  # an unseen class of ade150


# ---------------------------------------------------------------- plot_metrics
def _train_line(it: int, total: float, lr: float) -> dict:
    return {
        "data_time": 0.0019,
        "eta_seconds": 3.2,
        "iteration": it,
        "loss_ce": total * 0.7,
        "loss_distill": total * 0.3,
        "lr": lr,
        "rank_data_time": 0.0019,
        "time": 0.21,
        "total_loss": total,
    }


EVAL = {
    "sem_seg/mIoU": 31.5,
    "sem_seg/fwIoU": 50.1,
    "sem_seg/IoU-cat": 40.0,
    "sem_seg/mACC": 45.0,
    "sem_seg/pACC": 70.2,
    "sem_seg/ACC-cat": 60.0,
    "sem_seg/mIoU-seen": 40.0,
    "sem_seg/mIoU-unseen": 20.0,
    "sem_seg/hIoU": 26.666666666666668,
}


def _write_metrics(folder) -> None:
    """What detectron2's JSONWriter leaves after a run evaluated at 49, killed at ~60 while
    writing, and resumed from its iteration-39 checkpoint."""
    lines = [
        _train_line(19, 3.0, 0.00095),
        _train_line(39, 2.5, 0.00061),
        {**_train_line(49, 2.2, 0.00042), **EVAL},
        _train_line(59, 2.0, 0.00021),
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    text += '{"data_time": 0.002, "iteration": 6'  # cut mid-line by the kill
    text += "\n" + json.dumps(_train_line(39, 2.4, 0.00061)) + "\n"  # the resumed run
    (folder / "metrics.json").write_text(text)


def test_metrics_are_merged_by_iteration_later_lines_winning(tmp_path, caplog):
    _write_metrics(tmp_path)
    records = plot_metrics.load_metrics(str(tmp_path / "metrics.json"))
    assert [r["iteration"] for r in records] == [19, 39, 49, 59]
    assert records[1]["total_loss"] == 2.4  # the resumed run re-logged iteration 39
    assert "metrics.json:5 is not a JSONWriter record" in caplog.text


def test_plot_metrics_draws_losses_lr_and_split_miou(tmp_path):
    _write_metrics(tmp_path)
    output, summary = plot_metrics.plot_metrics(str(tmp_path))
    assert output == str(tmp_path / "metrics.png")  # beside metrics.json by default
    assert summary.panels == {
        "losses": ("loss_ce", "loss_distill", "total_loss"),
        "learning rate": ("lr",),
        "evaluation (%)": (
            "sem_seg/mIoU",
            "sem_seg/mIoU-seen",
            "sem_seg/mIoU-unseen",
            "sem_seg/hIoU",
        ),
    }
    assert summary.size == (800, 900)  # 8 x (3 panels x 3) inches at 100 dpi
    assert Image.open(output).size == summary.size


def test_several_test_datasets_get_one_panel_each():
    records = [
        {"iteration": 9, "voc_val/sem_seg/mIoU": 10.0, "voc_val/sem_seg/hIoU": 5.0},
        {"iteration": 9, "ade_val/sem_seg/mIoU": 8.0},
    ]
    panels = plot_metrics.collect(records)
    assert list(panels) == ["evaluation on ade_val (%)", "evaluation on voc_val (%)"]
    assert panels["evaluation on voc_val (%)"]["voc_val/sem_seg/hIoU"] == ([9], [5.0])


def test_plot_metrics_errors(tmp_path, capsys):
    assert plot_metrics.command([str(tmp_path)]) == 2
    assert "metrics.json does not exist" in capsys.readouterr().err
    (tmp_path / "metrics.json").write_text('{"iteration": 0, "time": 0.1}\n')
    assert plot_metrics.main([str(tmp_path)]) == 2
    assert "holds no losses" in capsys.readouterr().err


def test_plot_metrics_writes_the_format_its_output_names(tmp_path, capsys):
    _write_metrics(tmp_path)
    output, _ = plot_metrics.plot_metrics(str(tmp_path), str(tmp_path / "curves.jpg"))
    assert Image.open(output).format == "JPEG"
    # a suffix that is no picture: refused before anything is written (it used to get a PNG)
    assert plot_metrics.main([str(tmp_path), "--output", str(tmp_path / "curves.txt")]) == 2
    assert "curves.txt' must end in .png, .jpg or .jpeg" in capsys.readouterr().err
    assert not (tmp_path / "curves.txt").exists()


def test_a_file_that_is_not_metrics_json_fails_in_a_few_lines(tmp_path, capsys):
    # a config.yaml or a checkpoint given by mistake: one error, not a warning per line
    (tmp_path / "config.yaml").write_text("".join(f"KEY{i}: {i}\n" for i in range(200)))
    assert plot_metrics.main([str(tmp_path / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert "holds no losses" in err
    assert err.count("is not a JSONWriter record") == 3
    assert "200 lines in all are not JSONWriter records" in err
    _write_metrics(tmp_path)
    assert plot_metrics.main([str(tmp_path), "--output", str(tmp_path / "config.yaml/x.png")]) == 2
    assert "config.yaml/x.png: a part of its folder path is a file" in capsys.readouterr().err
    (tmp_path / "model_final.pth").write_bytes(b"PK\x03\x04\x80\xff" * 50)
    assert plot_metrics.main([str(tmp_path / "model_final.pth")]) == 2
    assert "model_final.pth holds no losses" in capsys.readouterr().err


# ---------------------------------------------------------------- drawing seen and unseen
def test_unseen_classes_are_hatched_and_seen_classes_flat():
    image = np.full((64, 64, 3), 128, np.uint8)
    label = np.zeros((64, 64), np.int64)
    label[:, 32:] = 1
    label[60:, :] = 255
    meta = vocabulary_metadata(["wall", "grass"], [[250, 20, 20], [20, 20, 250]])
    picture = draw_semantic(image, label, meta, unseen=["grass"]).get_image()
    assert picture.shape == (64, 64, 3)
    seen, unseen = picture[4:14, 8:24].reshape(-1, 3), picture[4:14, 40:56].reshape(-1, 3)
    assert len(np.unique(seen, axis=0)) == 1 and not (seen[0] == 128).all()  # flat, tinted
    assert len(np.unique(unseen, axis=0)) >= 2  # stripes
    assert (picture[62, 20:44] == 128).all()  # ignored pixels stay the image


@pytest.fixture
def ade_with_unseen(ade20k_registered):
    """The ADE fixture registered, its first val label holding an unseen (grass) block.

    Returns (that label, its dataset dict)."""
    path = ade20k_registered / "ADEChallengeData2016" / "annotations_detectron2" / "validation"
    gt = np.asarray(Image.open(path / f"{VAL0}.png")).copy()
    gt[40:56, 8:24] = GRASS
    Image.fromarray(gt).save(path / f"{VAL0}.png")
    return gt, {
        "file_name": str(_val0(ade20k_registered, "images", ".jpg")),
        "sem_seg_file_name": str(_val0(ade20k_registered, "annotations_detectron2", ".png")),
    }


def _val0(root, kind, ext):
    return root / "ADEChallengeData2016" / kind / "validation" / (VAL0 + ext)


def test_visualize_dataset_marks_unseen_classes(ade_with_unseen, tmp_path):
    out = tmp_path / "vis"
    argv = ["--dataset", "ade20k_sem_seg_val", "--output", str(out), "--num", "5"]
    assert visualize_dataset.command(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{VAL0}.png", "ADE_val_00000001.png"]
    assert Image.open(out / f"{VAL0}.png").size == (320, 320)  # 64 px enlarged 5x
    info = visualize_dataset.dataset_metadata("ade20k_sem_seg_val")
    _, present = visualize_dataset.draw_ground_truth(ade_with_unseen[1], info)
    assert present == {"sky": "seen", "bed": "seen", "grass": "unseen"}


def test_visualize_dataset_unknown_dataset(capsys, tmp_path):
    argv = ["--dataset", "ade20k_sem_seg_vall", "--output", str(tmp_path)]
    assert visualize_dataset.main(argv) == 2
    err = capsys.readouterr().err
    assert "'ade20k_sem_seg_vall' is not registered" in err and "ade20k_sem_seg_val" in err
    assert "closest registered names are ['ade20k_sem_seg_val'" in err


def test_visualize_dataset_output_that_cannot_be_a_folder(ade_with_unseen, tmp_path, capsys):
    (tmp_path / "vis.png").write_bytes(b"")
    argv = ["--dataset", "ade20k_sem_seg_val", "--num", "1", "--output"]
    assert visualize_dataset.main([*argv, str(tmp_path / "vis.png")]) == 2
    assert "output " + str(tmp_path / "vis.png") + " is a file" in capsys.readouterr().err
    assert visualize_dataset.main([*argv, "/proc/ovseg_vis"]) == 2
    assert "cannot create output folder /proc/ovseg_vis" in capsys.readouterr().err
    # a registered set not on disk: its folder and where to get it, as train_net.py says
    argv = ["--dataset", "coco_2017_val_panoptic", "--output", str(tmp_path / "vis")]
    assert visualize_dataset.main(argv) == 2
    err = capsys.readouterr().err
    assert "--dataset names 'coco_2017_val_panoptic', whose image folder" in err
    assert "datasets/README.md" in err and not (tmp_path / "vis").exists()


# ---------------------------------------------------------------- pseudo-labels
def _store(tmp_path, gt):
    store = make_store(
        tmp_path / "store",
        ["sky", "bed", "grass"],
        threshold=0.5,
        unseen=["grass"],
        dataset="ade20k_sem_seg_val",
    )
    pseudo = np.select([gt == 2, gt == 7], [0, 1], 255).astype(np.uint8)
    pseudo[0:8, 0:8] = 2  # wrong: grass where the truth is sky (4 of them ignored in truth)
    pseudo[60:, :] = 255  # below the threshold
    store.write(VAL0, pseudo, np.full(gt.shape, 0.75))
    return store


def test_pseudo_label_agreement_hand_computed(ade_with_unseen, tmp_path):
    gt, d = ade_with_unseen
    store = _store(tmp_path, gt)
    info = visualize_dataset.dataset_metadata("ade20k_sem_seg_val")
    meta = visualize_pseudo_labels.store_metadata(store, info)
    # a class keeps the dataset's colour in the pseudo panel
    assert meta.stuff_colors[2] == list(info["metadata"].stuff_colors[GRASS])
    picture, score = visualize_pseudo_labels.draw_comparison(store, VAL0, d, info, meta, 320)
    # both labelled: 4096 - 4 (truth ignores [:2, :2]) - 256 (pseudo ignores rows 60-63);
    # the grass block [40:56, 8:24] is ignored by the pseudo-label (255) but not the truth:
    # 16 x 16 = 256 more; wrong: the 8 x 8 grass corner minus its 4 ignored pixels = 60
    valid = 4096 - 4 - 256 - 256
    assert score == pytest.approx((valid - 60) / valid)
    assert picture.shape == (320 + 28, 4 * 320, 3)  # image | truth | pseudo | confidence


def test_visualize_pseudo_labels_writes_one_picture_per_stored_image(
    ade_with_unseen, tmp_path, capsys
):
    store = _store(tmp_path, ade_with_unseen[0])
    out = tmp_path / "vis"
    assert visualize_pseudo_labels.command(["--store", store.root, "--output", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == [f"{VAL0}.png"]
    # a panel height no picture can have: refused as the option, before any drawing
    argv = ["--store", store.root, "--output", str(tmp_path / "vis2"), "--panel-height", "-10"]
    assert visualize_pseudo_labels.main(argv) == 2
    assert "argument --panel-height: must be >= 1, got -10" in capsys.readouterr().err
