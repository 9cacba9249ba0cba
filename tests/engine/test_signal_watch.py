"""ZeroLossWatch: one warning when the logged total_loss stays exactly 0 for its window of
steps, none for a lone zero (an image of unseen classes only), again only after a signal."""

import logging
from types import SimpleNamespace

import pytest

from detectron2.utils.events import EventStorage

from ovseg.engine.signal_watch import ZeroLossWatch


def _warnings(caplog, losses, window, period=1):
    """The watch's warnings for ``losses`` (one per iteration), logged ``period`` steps at a
    time as the deferred metrics write them; the watch looks after every step."""
    watch = ZeroLossWatch(window)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "ovseg.engine.signal_watch"):
        with EventStorage(0) as storage:
            watch.trainer = SimpleNamespace(storage=storage)
            for it in range(len(losses)):
                if (it + 1) % period == 0 or it == len(losses) - 1:
                    for j in range(it - (it % period), it + 1):
                        storage.iter = j
                        storage.put_scalar("total_loss", losses[j])
                storage.iter = it
                watch.after_step()
    return [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("period", [1, 4])
def test_a_run_of_zero_losses_is_warned_about_once(caplog, period):
    warnings = _warnings(caplog, [1.0, 0.5] + [0.0] * 30, window=10, period=period)
    assert len(warnings) == 1
    assert "exactly 0 for 10 logged steps in a row (iterations 2-11)" in warnings[0]
    assert "ZERO_SHOT_SETTING" in warnings[0]


def test_lone_zeros_are_not_warned_about_and_a_new_run_is(caplog):
    losses = [1.0, 0.0, 0.0, 2.0] * 5 + [0.0] * 6 + [1.0] + [0.0] * 6
    warnings = _warnings(caplog, losses, window=5)
    assert [w.split("(")[1].split(")")[0] for w in warnings] == [
        "iterations 20-24",
        "iterations 27-31",
    ]
    assert _warnings(caplog, [0.0] * 4 + [1e-9], window=5) == []  # a tiny loss is a signal


def test_the_window_is_checked():
    with pytest.raises(ValueError, match="window must be at least 1 step, got 0"):
        ZeroLossWatch(0)
