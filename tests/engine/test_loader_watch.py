"""LoaderWatch: one warning when the steps wait for their data, none when the loader keeps
up or the run is shorter than the window; the values as the writers log them."""

import logging
import time
from types import SimpleNamespace

import pytest

from detectron2.utils.events import EventStorage

from ovseg.engine.loader_watch import LoaderWatch


def _warnings(caplog, waits, steps, window=10, period=1, timer_warmup=2):
    """The watch's messages for per-iteration waits and step times; ``data_time`` logged
    ``period`` steps at a time (the deferred metrics), ``time`` after the timer's warm-up."""
    watch = LoaderWatch(window, workers=4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "ovseg.engine.loader_watch"):
        with EventStorage(0) as storage:
            watch.trainer = SimpleNamespace(storage=storage)
            for it in range(len(waits)):
                storage.iter = it
                if it >= timer_warmup:
                    storage.put_scalar("time", steps[it])
                if (it + 1) % period == 0:
                    for j in range(it + 1 - period, it + 1):
                        storage.iter = j
                        storage.put_scalar("data_time", waits[j])
                    storage.iter = it
                watch.after_step()
    return [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("period", [1, 5])
def test_steps_waiting_for_data_are_warned_about_once(caplog, period):
    warnings = _warnings(caplog, [0.03] * 40, [0.1] * 40, period=period)
    assert len(warnings) == 1
    assert "each step waited 30 ms of 100 ms (median, 30%)" in warnings[0]
    assert "DATALOADER.NUM_WORKERS is 4 per process" in warnings[0]


def test_a_loader_that_keeps_up_or_a_short_run_is_not_warned_about(caplog):
    assert _warnings(caplog, [0.001] * 40, [0.1] * 40) == []  # 1% waiting
    assert _warnings(caplog, [0.09] * 11, [0.1] * 11) == []  # 9 timed steps < the window
    # a few slow batches (a cache warming up) do not move the median
    waits = [0.001] * 30
    waits[5:9] = [0.5] * 4
    assert _warnings(caplog, waits, [0.1] * 30) == []


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="window must be at least 1"):
        LoaderWatch(0)
    with pytest.raises(ValueError, match=r"threshold must be a share in \(0, 1\)"):
        LoaderWatch(threshold=1.5)


@pytest.mark.usefixtures("one_torch_thread", "small_ade20k")
def test_a_training_run_whose_mapper_is_slow_is_told_so(tmp_path, monkeypatch):
    # a real run: a mapper slower than the step (0.15 s per image, 2 images per step, in the
    # main process) and the watch over 4 steps; its figures come from detectron2's own logs
    from ovseg_testing import CONFIGS, small_semfpn_opts
    from ovseg_testing.logs import records

    from ovseg.data.dataset_mappers.semantic import SemanticDatasetMapper
    from ovseg.engine import Trainer
    from ovseg.engine.defaults import load_config

    config = str(CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml")
    opts = small_semfpn_opts(tmp_path / "run", 9, "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer = Trainer(load_config(config, opts))
    watch = next(h for h in trainer._hooks if isinstance(h, LoaderWatch))
    assert watch.workers == trainer.cfg.DATALOADER.NUM_WORKERS and watch.window == 100
    watch.window = 4
    trainer.resume_or_load(resume=False)
    mapper_call = SemanticDatasetMapper.__call__

    def slow(self, dataset_dict):
        time.sleep(0.15)
        return mapper_call(self, dataset_dict)

    monkeypatch.setattr(SemanticDatasetMapper, "__call__", slow)
    with records("ovseg.engine.loader_watch", logging.WARNING) as logged:
        trainer.train()
    messages = [r.getMessage() for r in logged]
    assert len(messages) == 1 and messages[0].startswith("Training waits for its data"), messages
