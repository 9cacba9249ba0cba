"""The shared test helpers' own contract: assert_golden refuses a missing file, rewrites on
request, compares each kind of key as declared, and every stored golden file is exactly the
text a regeneration would write."""

from __future__ import annotations

import json

import pytest
from ovseg_testing import ROOT, Tol, assert_golden, dumps_golden
from ovseg_testing.golden import REGEN

# every golden file of the suite and its layout (None: one key per line)
GOLDEN_FILES = {
    "tests/clip/golden/tiny_vit.json": None,
    "tests/clip/golden/tiny_rn.json": None,
    "tests/modeling/golden/lseg_tiny_vit.json": None,
    "tests/modeling/golden/maskclip_plus_tiny.json": None,
    "tests/modeling/golden/zegclip_tiny_vit.json": 1,
}
STORED = {"init": 100.0, "shape": [2, 3], "x": [1.0, 2.0], "losses": {"a": 2.0}}
DECLARED = {
    "init": ("init",),
    "exact": ("shape",),
    "tolerances": {"x": Tol(atol=1e-4), "losses": Tol(atol=0.0, rtol=1e-4)},
}


@pytest.fixture
def golden(tmp_path, monkeypatch):
    monkeypatch.delenv(REGEN, raising=False)
    path = tmp_path / "golden" / "g.json"
    path.parent.mkdir()
    path.write_text(dumps_golden(STORED))
    return path


def test_every_golden_file_is_in_the_regenerated_layout():
    found = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("golden/*.json")}
    assert found == set(GOLDEN_FILES)
    for name, indent in GOLDEN_FILES.items():
        text = (ROOT / name).read_text()
        assert dumps_golden(json.loads(text), indent) == text, name


def test_a_missing_file_is_refused_not_created(tmp_path, monkeypatch):
    monkeypatch.delenv(REGEN, raising=False)
    path = tmp_path / "g.json"
    with pytest.raises(AssertionError, match=f"missing; create it with {REGEN}=1"):
        assert_golden(path, STORED, **DECLARED)
    assert not path.exists()


def test_regeneration_writes_the_file_and_skips(tmp_path, monkeypatch):
    monkeypatch.setenv(REGEN, "1")
    path = tmp_path / "golden" / "g.json"
    with pytest.raises(pytest.skip.Exception, match="regenerated"):
        assert_golden(path, STORED, **DECLARED, indent=1)
    assert path.read_text() == json.dumps(STORED, indent=1) + "\n"
    monkeypatch.delenv(REGEN)
    assert_golden(path, STORED, **DECLARED)


def test_values_within_their_tolerances_pass(golden):
    near = {"init": 100.00005, "shape": [2, 3], "x": [1.00009, 1.99991], "losses": {"a": 2.00019}}
    assert_golden(golden, near, **DECLARED)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"init": 100.001}, "seeded initialisation changed"),
        ({"shape": [2, 4]}, "shape: \\[2, 4\\] against golden \\[2, 3\\]"),
        ({"x": [1.00011, 2.0]}, "x: 1 of 2 values outside atol"),
        ({"x": [1.0]}, "x: shape \\(1,\\) against golden \\(2,\\)"),
        ({"x": [float("nan"), 2.0]}, "x: 1 of 2 values outside"),
        ({"losses": {"a": 2.00021}}, "losses/a: 1 of 1 values outside atol 0.0 \\+ rtol 0.0001"),
        ({"losses": {"a": 2.0, "b": 1.0}}, "losses: entries"),
    ],
)
def test_each_difference_is_named(golden, change, message):
    with pytest.raises(AssertionError, match=message):
        assert_golden(golden, {**STORED, **change}, **DECLARED)


def test_every_output_is_declared_once_and_stored(golden):
    with pytest.raises(AssertionError, match="must each be declared once"):
        assert_golden(golden, {**STORED, "new": 1.0}, **DECLARED)
    declared = {**DECLARED, "tolerances": {**DECLARED["tolerances"], "new": Tol(1e-4)}}
    with pytest.raises(AssertionError, match="regenerate it"):
        assert_golden(golden, {**STORED, "new": 1.0}, **declared)
