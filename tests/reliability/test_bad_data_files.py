"""A dataset file that cannot be used (truncated, empty, not an image, a label of another size
than its image) ends a job in one line: the file, what is wrong, its dataset and what to do,
also when a DataLoader worker read it (torch re-raises the worker's error with its whole
traceback as the message); what the run had written is kept whole."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from ovseg_testing import (
    CONFIGS,
    ROOT,
    eval_mapper,
    registered_ade20k,
    run_main,
    small_semfpn_opts,
    subprocess_env,
    write_ade20k_fixture,
)
from ovseg_testing.logs import records
from PIL import Image

from ovseg.data.image_io import ImageDecodeError, LabelSizeError, read_image
from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.utils import io

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"
ADE = "ADEChallengeData2016"
LABEL_ADVICE = (
    "It is a label of dataset {!r}, which python datasets/prepare_ade20k_sem_seg.py "
    "converts: delete it and run that script again"
)


def _train_files(root):
    image = root / ADE / "images/training/ADE_train_00000001.jpg"
    return image, root / ADE / "annotations_detectron2/training/ADE_train_00000001.png"


def test_an_empty_file_is_said_to_be_empty(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(f"Image file {str(path)!r} is empty (0 bytes)"), message
    assert "remove it from the dataset" in message and "BufferedReader" not in message


def _train(out, max_iter, workers, resume=False):
    opts = small_semfpn_opts(out, max_iter, "DATALOADER.NUM_WORKERS", str(workers))
    trainer = Trainer(load_config(str(CONFIG), opts))
    trainer.resume_or_load(resume=resume)
    trainer.test = lambda *args, **kwargs: {}
    trainer.train()


def _checkpoints(folder) -> dict:
    """The bytes of the run's checkpoints and its last_checkpoint."""
    names = [n for n in os.listdir(folder) if n.endswith(".pth") or n == "last_checkpoint"]
    return {n: (folder / n).read_bytes() for n in names}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.usefixtures("one_torch_thread")
def test_a_bad_label_stops_training_in_one_line_and_keeps_the_run(tmp_path, workers):
    root = write_ade20k_fixture(tmp_path / "datasets", n_train=2, n_val=1)
    out = tmp_path / "run"
    with registered_ade20k(root):
        _train(out, 2, workers)  # model_0000001.pth, model_final.pth
        kept = _checkpoints(out)
        _, label = _train_files(root)
        label.write_text("not a PNG\n")
        with records("detectron2.engine.train_loop", logging.ERROR) as logged:
            with pytest.raises(ImageDecodeError) as info:
                _train(out, 4, workers, resume=True)
    message = str(info.value)
    assert message.startswith(f"Cannot decode image file {str(label)!r} (UnidentifiedImage")
    assert LABEL_ADVICE.format("ade20k_sem_seg_train") in message
    assert "\n" not in message and "DataLoader worker" not in message
    # detectron2's log of it: the error's own line, not the worker's traceback
    assert logged and logged[-1].exc_info is None
    assert str(label) in logged[-1].getMessage() and "\n" not in logged[-1].getMessage()
    assert len(kept) == 3 and _checkpoints(out) == kept  # nothing saved, nothing cut
    assert not [n for n in os.listdir(out) if n.startswith(io.TMP_PREFIX)]


def _command(args, datasets, out):
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", str(CONFIG), *args],
        cwd=ROOT,
        env=subprocess_env(datasets),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    assert "Traceback" not in log and "DataLoader worker" not in log, log[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train_net.py: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert not [n for n in os.listdir(out) if n.endswith(".pth") or n.startswith(io.TMP_PREFIX)]
    return lines[0]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_train_net_names_a_truncated_image_in_one_line(tmp_path, workers):
    root = write_ade20k_fixture(tmp_path / "datasets", n_train=2, n_val=1)
    image, _ = _train_files(root)
    image.write_bytes(image.read_bytes()[:300])
    out = tmp_path / "run"
    opts = small_semfpn_opts(out, 2, "DATALOADER.NUM_WORKERS", workers)
    line = _command(opts, root, out)
    assert line.startswith(f"train_net.py: error: Cannot decode image file {str(image)!r} (")
    assert line.endswith(
        "It is an image of dataset 'ade20k_sem_seg_train': check the dataset's download "
        "(download or extract the file again), or move it and its label out of the split's "
        "folders"
    ), line


def test_eval_only_names_a_label_of_another_size_in_one_line(tmp_path):
    root = write_ade20k_fixture(tmp_path / "datasets", n_train=2, n_val=1)
    label = root / ADE / "annotations_detectron2/validation/ADE_val_00000000.png"
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(label)
    out = tmp_path / "eval"
    opts = small_semfpn_opts(out, 2, "DATALOADER.NUM_WORKERS", "2")
    line = _command(["--eval-only", *opts], root, out)
    assert line.startswith(
        f"train_net.py: error: sem_seg_file_name {str(label)!r} is 64x40 (WxH) but its image "
        "is 64x64; a label must have its image's size: convert the label again, or remove "
    ), line
    assert LABEL_ADVICE.format("ade20k_sem_seg_val") in line


def test_visualize_dataset_names_a_truncated_label(tmp_path, capsys):
    root = write_ade20k_fixture(tmp_path / "datasets", n_train=2, n_val=1)
    _, label = _train_files(root)
    label.write_bytes(label.read_bytes()[:-40])
    argv = ["--dataset", "ade20k_sem_seg_train", "--output", str(tmp_path / "vis")]
    argv += ["--start", "1", "--num", "1", "--min-size", "64"]  # the bad one, small
    with registered_ade20k(root):
        assert run_main("tools/visualize_dataset.py", argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "Traceback" not in err, err
    error = f"visualize_dataset.py: error: Cannot decode image file {str(label)!r}"
    assert lines[0].startswith(error), err
    assert LABEL_ADVICE.format("ade20k_sem_seg_train") in lines[0]


def test_a_label_of_another_size_says_what_to_do(tmp_path):
    image, label = tmp_path / "a.png", tmp_path / "a_label.png"
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(image)
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(label)
    record = {"file_name": str(image), "sem_seg_file_name": str(label)}
    with pytest.raises(LabelSizeError, match="convert the label again, or remove the image"):
        eval_mapper(["a", "b"])(record)
