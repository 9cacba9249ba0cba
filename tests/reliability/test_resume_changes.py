"""A --resume whose config differs from the run's says what it does with the difference:
another SOLVER.OPTIMIZER stops before anything is written (it crashed inside torch with
KeyError 'step' or 'momentum'); SOLVER values the saved optimizer and schedule override are
named with the values in use; a MAX_ITER below the checkpoint's iteration says nothing is
trained; --eval-only --resume says it ignores MODEL.WEIGHTS; --eval-only into a run's folder
keeps the run's config.yaml."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import CONFIGS, cpu_opts
from ovseg_testing.logs import records

from detectron2.engine import default_argument_parser

from ovseg.engine import Trainer, setup
from ovseg.engine.checkpoint_fit import CheckpointMismatchError
from ovseg.engine.checks import check_run_files, check_run_target
from ovseg.engine.defaults import load_config
from ovseg.utils.cli import run_reporting_errors

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"  # SGD, BASE_LR 0.01


def _opts(out, *extra):
    return cpu_opts(
        "SemanticSegmentor", out / "cache",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "(1000,)",
        "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(out), *extra,
    )  # fmt: skip


def _train(out, *extra, resume=False):
    trainer = Trainer(load_config(str(CONFIG), _opts(out, *extra)))
    trainer.resume_or_load(resume=resume)
    trainer.test = lambda *a, **k: {}
    trainer.train()
    return trainer


@pytest.fixture
def run(ade20k_registered, tmp_path):
    """A finished 4-iteration run (model_0000001, model_0000003, model_final)."""
    out = tmp_path / "run"
    setup(default_argument_parser().parse_args(["--config-file", str(CONFIG), *_opts(out)]))
    _train(out)
    return out


def test_another_optimizer_stops_before_anything_is_written(run, capsys):
    cfg = load_config(str(CONFIG), _opts(run, "SOLVER.OPTIMIZER", "ADAMW", "SOLVER.MAX_ITER", "6"))
    before = (run / "config.yaml").read_bytes()
    assert run_reporting_errors("train_net.py", lambda: check_run_files(cfg, resume=True)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SOLVER.OPTIMIZER" in err, err
    assert "SGD" in err and "ADAMW" in err and "nothing was written" in err, err
    args = ["--config-file", str(CONFIG), "--resume", *_opts(run, "SOLVER.OPTIMIZER", "ADAMW")]
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        setup(default_argument_parser().parse_args(args))
    assert (run / "config.yaml").read_bytes() == before
    # the Trainer refuses it too (a run set up without train_net.py's checks)
    with pytest.raises(CheckpointMismatchError, match="SGD.*ADAMW"):
        Trainer(cfg).resume_or_load(resume=True)


def test_changed_solver_values_are_named_with_the_values_in_use(run):
    with records("ovseg.engine.trainer") as said:
        trainer = _train(
            run, "SOLVER.MAX_ITER", "6", "SOLVER.BASE_LR", "0.05", "SOLVER.WEIGHT_DECAY", "0.0",
            resume=True,
        )  # fmt: skip
    [warning] = [r.getMessage() for r in said if "SOLVER" in r.getMessage()]
    assert "SOLVER.BASE_LR 0.05 here, 0.01 in the run" in warning, warning
    assert "SOLVER.WEIGHT_DECAY 0.0 here, 0.0001 in the run" in warning, warning
    # the schedule's rates are BASE_LR times each group's multiplier (0.003 was read as a
    # BASE_LR of 0.0003 with a x10 multiplier): they are named as such
    in_use = "learning rates after multipliers 0.01"
    assert in_use in warning and "weight decays 0.0001" in warning, warning
    # what the warning says is what trained
    groups = trainer._trainer.optimizer.param_groups
    assert {g["weight_decay"] for g in groups} >= {0.0001}
    assert max(trainer.scheduler.base_lrs) == pytest.approx(0.01)
    # an unchanged resume says nothing
    with records("ovseg.engine.trainer") as said:
        _train(run, "SOLVER.MAX_ITER", "8", resume=True)
    assert not [r for r in said if "SOLVER" in r.getMessage()]


def test_max_iter_below_the_checkpoint_says_nothing_is_trained(run):
    with records("ovseg.engine.trainer") as said:
        trainer = _train(run, "SOLVER.MAX_ITER", "2", resume=True)
    assert trainer.start_iter == 4
    [warning] = [r.getMessage() for r in said if "MAX_ITER" in r.getMessage()]
    assert "SOLVER.MAX_ITER 2 is below" in warning and "nothing is trained" in warning, warning


def test_eval_only_resume_names_the_weights_it_ignores(run):
    cfg = load_config(str(CONFIG), _opts(run, "MODEL.WEIGHTS", "other.pth"))
    with records("ovseg.engine.checks") as said:
        check_run_target(cfg, eval_only=True, resume=True, weights_given=True)
    [warning] = [r.getMessage() for r in said]
    assert "MODEL.WEIGHTS other.pth is ignored" in warning and "model_final.pth" in warning


def test_eval_only_keeps_the_runs_config(run):
    before = (run / "config.yaml").read_bytes()
    args = ["--config-file", str(CONFIG), "--eval-only", *_opts(run, "SOLVER.BASE_LR", "0.5")]
    setup(default_argument_parser().parse_args(args))
    assert (run / "config.yaml").read_bytes() == before
    assert "BASE_LR: 0.5" in (run / "config_eval.yaml").read_text()


def test_other_trainable_parameters_stop_naming_them(run):
    # freezing the stem and res2 (FREEZE_AT 3) leaves their 10 weights out of the optimizer:
    # torch failed inside its load_state_dict ("a different number of parameter groups"), and
    # with as many parameters it would give one parameter's momentum to another
    opts = _opts(run, "MODEL.BACKBONE.FREEZE_AT", "3", "SOLVER.MAX_ITER", "6")
    trainer = Trainer(load_config(str(CONFIG), opts))
    with pytest.raises(CheckpointMismatchError, match="other trainable parameters") as info:
        trainer.resume_or_load(resume=True)
    message = str(info.value)
    assert "10 trained in the run, not here (backbone.bottom_up.stem.conv1.weight" in message
    assert "trained here, not in the run" not in message and "MODEL.WEIGHTS" in message
    # the run's own config resumes
    _train(run, "SOLVER.MAX_ITER", "6", resume=True)


def test_an_optimizer_read_from_a_damaged_checkpoint_does_not_stop_the_resume(run):
    # the optimizer check read the latest checkpoint before --resume chose an intact one: a
    # byte changed in its recorded config ("SGD" -> "SGE") stopped the run naming SGE
    final = run / "model_final.pth"
    data = torch.load(final, weights_only=True)
    meta = data["ovseg_meta"]
    meta["config"] = meta["config"].replace("OPTIMIZER: SGD", "OPTIMIZER: SGE")
    torch.save(data, final)  # the recorded digests no longer match
    with records("fvcore.common.checkpoint") as said:
        trainer = _train(run, "SOLVER.MAX_ITER", "6", resume=True)
    assert trainer.checkpointer.loaded_path == str(run / "model_0000003.pth")
    assert trainer.start_iter == 4 and trainer.iter == 6
    assert any(f"{final}, named by" in r.getMessage() for r in said)
