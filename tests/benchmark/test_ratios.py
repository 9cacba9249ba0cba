"""The interleaved ratio benchmark: both variants timed in turns, the evaluator's work real."""

from ovseg.benchmark.ratios import evaluator_ratio, interleaved


def test_interleaved_times_both_in_turns():
    calls = []
    res = interleaved(lambda: calls.append("a"), lambda: calls.append("b"), repeats=3)
    assert calls == ["a", "b"] * 4  # one untimed call of each, then turns
    assert res["a_s"] >= 0 and res["b_s"] >= 0 and res["repeats"] == 3


def test_evaluator_ratio_on_tiny_arrays():
    res = evaluator_ratio(size=16, classes=4, images=2, repeats=2)
    assert res["a_s"] > 0 and res["b_s"] > 0 and res["b_over_a"] > 0
    assert res["argmax_then_bincount"]["b_s"] > 0 and res["a_mpix_per_s"] > 0
