"""--eval-only never overwrites an earlier evaluation's results: pointed at a training run's
folder it used to overwrite the run's final evaluation in OUTPUT_DIR/inference (detectron2's
behaviour), and each evaluation the one before. It now writes into the first of inference,
inference_2, ... that holds no results or this very evaluation's, records what produced each
and says where the results went."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest
import torch
from ovseg_testing import CONFIGS, ROOT, cpu_opts
from ovseg_testing.logs import records

from detectron2.engine import default_argument_parser

from ovseg.engine import AtomicCheckpointer, Trainer
from ovseg.engine.defaults import load_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"
RESULTS = ("sem_seg_evaluation.pth", "confusion_matrix.npy")


def _opts(run, *extra):
    return cpu_opts("SemanticSegmentor", run / "cache", "OUTPUT_DIR", str(run), *extra)


def _eval_only(run, *extra):
    spec = importlib.util.spec_from_file_location("ovseg_train_net", ROOT / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    opts = _opts(run, "MODEL.WEIGHTS", str(run / "model_final.pth"), *extra)
    args = default_argument_parser().parse_args(
        ["--config-file", str(CONFIG), "--eval-only", *opts]
    )
    with records("ovseg", logging.INFO) as said:
        module.main(args)
    return [r.getMessage() for r in said if "--eval-only: results" in r.getMessage()]


def _files(folder):
    return {name: (folder / name).read_bytes() for name in RESULTS}


def test_eval_only_keeps_the_runs_own_evaluation_and_earlier_ones(ade20k_registered, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(str(CONFIG), _opts(run))
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    Trainer.test(cfg, model)  # the run's final evaluation (a random model's: its own numbers)
    torch.manual_seed(1)
    AtomicCheckpointer(Trainer.build_model(cfg), str(run)).save("model_final")
    runs_own = _files(run / "inference")

    said = _eval_only(run)
    assert _files(run / "inference") == runs_own  # kept, byte for byte
    assert _files(run / "inference_2").keys() == runs_own.keys()
    assert said[0].startswith(f"--eval-only: results go to {run / 'inference_2'} ("), said
    assert f"{run / 'inference'} holds an earlier evaluation" in said[0], said
    assert said[-1] == f"--eval-only: results saved in {run / 'inference_2'}", said
    record = json.loads((run / "inference_2" / "evaluation.json").read_text())
    assert record["weights"] == str(run / "model_final.pth") and record["config_sha256"]
    assert (run / "inference_2" / "config_eval.yaml").read_text() == (
        run / "config_eval.yaml"
    ).read_text()

    # the same evaluation again rewrites its own folder; other settings get a new one
    first = _files(run / "inference_2")
    _eval_only(run)
    assert _files(run / "inference_2") == first and not (run / "inference_3").exists()
    said = _eval_only(run, "TEST.SAVE_CONFUSION_MATRIX", "False")
    assert said[-1] == f"--eval-only: results saved in {run / 'inference_3'}", said
    assert (run / "inference_3" / "sem_seg_evaluation.pth").is_file()
    assert _files(run / "inference") == runs_own and _files(run / "inference_2") == first


def test_eval_only_into_a_fresh_folder_writes_inference(ade20k_registered, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(str(CONFIG), _opts(run))
    AtomicCheckpointer(Trainer.build_model(cfg), str(run)).save("model_final")
    said = _eval_only(run)
    assert said == [
        f"--eval-only: results go to {run / 'inference'}",
        f"--eval-only: results saved in {run / 'inference'}",
    ], said
    assert sorted(p.name for p in run.glob("inference*")) == ["inference"]


def test_a_training_evaluation_after_an_eval_only_is_kept_from_its_repeat(
    ade20k_registered, tmp_path
):
    # an --eval-only into a fresh folder, then a training run's evaluation into the same
    # inference/ (the record left there still names the eval-only's weights and config):
    # repeating that --eval-only must not take the training's results for its own
    run = tmp_path / "run"
    cfg = load_config(str(CONFIG), _opts(run))
    AtomicCheckpointer(Trainer.build_model(cfg), str(run)).save("model_final")
    _eval_only(run)
    torch.manual_seed(3)
    Trainer.test(cfg, Trainer.build_model(cfg))  # the training run's evaluation
    trained = _files(run / "inference")
    said = _eval_only(run)
    assert said[-1] == f"--eval-only: results saved in {run / 'inference_2'}", said
    assert _files(run / "inference") == trained
