"""``make demo``'s students (``tools/run_demo.py``): which toy configs train, in what order,
on which toy datasets, and where a second stage starts.

Each student's config is found under ``configs/toy`` by its glob; the table's order is the
order of the results table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

from ..data.datasets.toy_world import SPLITS
from .defaults import load_config

__all__ = [
    "SPLIT_DATASETS",
    "OWN_PIPELINES",
    "STUDENTS",
    "Student",
    "select_students",
    "split_datasets",
    "start_checkpoint",
]


class Student(NamedTuple):
    """A student of the demo.

    ``configs`` globs ``configs/toy`` (the first match runs). A student with a ``parent`` is a
    second stage: it starts from the parent's checkpoint of the same CLIP variant that its
    config's MODEL.WEIGHTS names (ZegCLIP's transductive stage: the halfway one, as the
    paper). ``demo_opts`` are config overrides of the default (not --quick) run, where a
    costly student declares a cheaper toy schedule (fewer SOLVER.MAX_ITER, ...) that keeps
    ``make demo`` within its budget (25 minutes on 2 cores); ``in_default`` False leaves it
    out of a plain ``make demo`` (``STUDENTS=`` still runs it). ``data`` names the toy
    world's datasets it trains and tests on (``toy_world[_b]_<data>_{train,val}``):
    ``sem_seg``, or ``panoptic`` for a student that also gives instances and panoptic
    segments (its results add mask AP and PQ, seen and unseen).
    """

    key: str
    configs: str
    parent: Optional[str] = None
    demo_opts: Tuple[str, ...] = ()
    in_default: bool = True
    data: str = "sem_seg"


# the order of the results table
STUDENTS = (
    Student("lseg", "lseg_*.yaml"),
    Student("zegclip", "zegclip_*_inductive_*.yaml"),
    Student("zegclip_transductive", "zegclip_*_transductive_*.yaml", parent="zegclip"),
    Student("maskclip_plus", "maskclip_plus_*.yaml"),
    Student("freeseg", "freeseg_*_alltask_*.yaml", data="panoptic"),
    Student("xpm", "xpm_student_*.yaml"),
)
# students with their own pipeline and table (XPM: teacher, caption pseudo-labels, student;
# ovseg.engine.demo_xpm)
OWN_PIPELINES = ("xpm",)


def select_students(names: Optional[Sequence[str]], students=STUDENTS) -> List[str]:
    """The students to run, in table order: ``names`` (comma- or space-separated), with the
    first stage of every selected second stage; ``None`` = the default set.

    Raises:
        ValueError: an unknown name, with the valid ones.
    """
    keys = [s.key for s in students]
    if names is None:
        return [s.key for s in students if s.in_default]
    wanted = {n.strip() for name in names for n in name.split(",") if n.strip()}
    unknown = sorted(wanted - set(keys))
    if unknown or not wanted:
        raise ValueError(
            f"unknown student(s) {', '.join(unknown) or '(none given)'}; valid students: "
            f"{', '.join(keys)} (e.g. make demo STUDENTS=lseg,zegclip)"
        )
    parents = {s.key: s.parent for s in students}
    for key in list(wanted):
        while parents[key] is not None:
            key = parents[key]
            wanted.add(key)
    return [k for k in keys if k in wanted]


def split_datasets(split: str, data: str = "sem_seg") -> Tuple[str, str]:
    """The toy world's (train, val) dataset names of a zero-shot split and kind of data."""
    prefix = "toy_world" if split == "a" else f"toy_world_{split}"
    return f"{prefix}_{data}_train", f"{prefix}_{data}_val"


SPLIT_DATASETS = {s: split_datasets(s) for s in SPLITS}


def start_checkpoint(config: Path, parent_config: Path, quick_iters: int | None) -> str:
    """The file name of the parent checkpoint a second stage starts from.

    It is the basename of the stage's ``MODEL.WEIGHTS`` (``model_final.pth`` or
    ``model_<iteration index>.pth``). A run with ``quick_iters`` iterations per stage moves an
    intermediate checkpoint to the same fraction of the parent's schedule, which must then be
    the halfway point (quick runs save one there).
    """
    name = Path(load_config(str(config)).MODEL.WEIGHTS).name
    match = re.fullmatch(r"model_(\d{7})\.pth", name)
    if name == "model_final.pth" or (match is not None and quick_iters is None):
        return name
    if match is None:
        raise ValueError(f"{config}: MODEL.WEIGHTS names {name!r}, not a checkpoint of its "
                         "parent run (model_final.pth or model_<7 digits>.pth)")  # fmt: skip
    parent_iters = load_config(str(parent_config)).SOLVER.MAX_ITER
    if 2 * (int(match.group(1)) + 1) != parent_iters:
        raise ValueError(
            f"{config}: a quick run saves its parent's halfway checkpoint only; "
            f"{name} is not the halfway point of {parent_iters} iterations"
        )
    return f"model_{quick_iters // 2 - 1:07d}.pth"
