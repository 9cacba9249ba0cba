"""Golden-output regression: small slices of a seeded model's outputs stored as JSON, so a
refactor cannot silently change numerics.

After an intended change, regenerate with ``OVSEG_REGEN_GOLDEN=1 python -m pytest <test>``
and review the diff; a missing file is a failure, never created silently."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import pytest

REGEN = "OVSEG_REGEN_GOLDEN"
INIT_RTOL = 1e-6


class Tol(NamedTuple):
    """Elementwise closeness as numpy's and torch's ``allclose``:
    ``|got - golden| <= atol + rtol * |golden|``."""

    atol: float
    rtol: float = 0.0


def dumps_golden(outputs: Mapping[str, Any], indent: Optional[int] = None) -> str:
    """The golden file's text: one key per line with compact values (``indent=None``), or
    ``json.dumps(outputs, indent=indent)``; both end with a newline."""
    if indent is not None:
        return json.dumps(outputs, indent=indent) + "\n"
    lines = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in outputs.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def assert_golden(
    path: Path,
    outputs: Mapping[str, Any],
    *,
    tolerances: Mapping[str, Tol],
    init: Sequence[str] = (),
    exact: Sequence[str] = (),
    indent: Optional[int] = None,
) -> None:
    """Compare ``outputs`` with the golden file at ``path``, or rewrite it (then skip) when
    ``OVSEG_REGEN_GOLDEN=1``. Every output key is compared in exactly one way.

    Args:
        path (Path): the golden JSON file.
        outputs (dict): key -> a number, a nested list of numbers, or a dict of those
            (compared entry by entry with the key's tolerance).
        tolerances (dict): key -> Tol for the compared values.
        init (keys): sums over the seeded initial weights, compared first at relative
            1e-6: when they differ the seeded initialisation changed (a torch or open_clip
            version), and the other values cannot be compared.
        exact (keys): values compared with ``==`` (shapes, counts).
        indent (int, optional): the file's layout, see ``dumps_golden``.
    """
    declared = [*init, *exact, *tolerances]
    assert sorted(declared) == sorted(outputs), (
        f"outputs {sorted(outputs)} must each be declared once in init, exact or "
        f"tolerances, which name {sorted(declared)}"
    )
    if os.environ.get(REGEN) == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(dumps_golden(outputs, indent))
        pytest.skip(f"regenerated {path}")
    assert path.is_file(), f"{path} missing; create it with {REGEN}=1"
    golden = json.loads(path.read_text())
    assert set(golden) == set(outputs), (
        f"{path} holds {sorted(golden)} but the test computes {sorted(outputs)}; "
        f"regenerate it with {REGEN}=1"
    )
    for key in init:
        assert outputs[key] == pytest.approx(golden[key], rel=INIT_RTOL), (
            f"{key}: {outputs[key]} against golden {golden[key]}: the seeded initialisation "
            "changed (torch or open_clip version?), so the other golden values cannot be "
            "compared"
        )
    for key in exact:
        assert outputs[key] == golden[key], f"{key}: {outputs[key]} against golden {golden[key]}"
    for key, tol in tolerances.items():
        _assert_close(key, outputs[key], golden[key], tol)


def _assert_close(key: str, got: Any, want: Any, tol: Tol) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), (
            f"{key}: entries {sorted(got) if isinstance(got, dict) else got!r} against golden "
            f"{sorted(want)}"
        )
        for sub in want:
            _assert_close(f"{key}/{sub}", got[sub], want[sub], tol)
        return
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{key}: shape {got.shape} against golden {want.shape}"
    diff = np.abs(got - want)
    within = diff <= tol.atol + tol.rtol * np.abs(want)
    assert within.all(), (
        f"{key}: {int((~within).sum())} of {diff.size} values outside atol {tol.atol} + "
        f"rtol {tol.rtol} x |golden|; max abs diff {np.nanmax(diff, initial=0.0):.2e}"
    )
