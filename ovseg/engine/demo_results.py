"""``make demo``'s results (``tools/run_demo.py``): the splits averaged and the markdown table.

The semantic table has a row per student and CLIP variant (mIoU seen / unseen, hIoU); the
students evaluated on a panoptic test set (FreeSeg) also get a row in the mask table: mask AP
(seen / unseen, AP50 unseen) and PQ (seen / unseen).
"""

from __future__ import annotations

import numpy as np

from .demo_students import OWN_PIPELINES

__all__ = ["MASK_KEYS", "average_splits", "results_markdown"]

#: the mask table's columns, the keys of a run with instance and panoptic results
MASK_KEYS = ("AP-seen", "AP-unseen", "AP50-unseen", "PQ-seen", "PQ-unseen")
VARIANTS = (("teacher", "toy CLIP"), ("random_teacher", "random CLIP"))


def _mean(values):
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def average_splits(per_split: dict) -> dict:
    """Average every numeric leaf over the splits (both splits hold the same keys); keys
    starting with ``_`` are left out."""
    first = next(iter(per_split.values()))

    def walk(node, path):
        if isinstance(node, dict):
            return {k: walk(v, path + [k]) for k, v in node.items() if not k.startswith("_")}
        if isinstance(node, (int, float)):
            leaves = []
            for res in per_split.values():
                for k in path:
                    res = res.get(k) if isinstance(res, dict) else None
                leaves.append(res)
            return round(_mean(leaves), 2)
        return node

    return walk(first, [])


def _f(x) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.1f}"


def _table(title: str, first: str, cols, rows) -> list:
    """A titled results table: one line per (name, CLIP label, record) of ``rows``."""
    lines = ["", title, "", f"| {first} | CLIP | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]  # fmt: skip
    for name, clip, record in rows:
        lines.append(f"| {name} | {clip} | " + " | ".join(_f(record.get(c)) for c in cols) + " |")
    return lines


def _mask_table(students: dict) -> list:
    """The mask table's lines ([] when no student has mask results)."""
    keyed = {k: runs for k, runs in students.items() if "PQ-unseen" in runs["teacher"]}
    if not keyed:
        return []
    title = (
        "Instance and panoptic segmentation (the panoptic val set's things, mask AP; all "
        "segments, PQ):"
    )
    rows = [(k, label, runs[v]) for k, runs in keyed.items() for v, label in VARIANTS]
    return _table(title, "student", MASK_KEYS, rows)


def xpm_markdown(students: dict) -> list:
    """results.md's XPM table ([] when the XPM row did not run)."""
    runs = students.get("xpm")
    if not runs:
        return []
    title = (
        "XPM (mask AP on the toy world's instance val set, every shape; seconds: the "
        "student's with its teacher's training):"
    )
    rows = [
        ("student, caption pseudo-labels", "toy CLIP", runs.get("teacher", {})),
        ("student, caption pseudo-labels", "random CLIP", runs.get("random_teacher", {})),
        ("teacher (no pseudo-labels)", "toy CLIP", runs.get("no_pseudo", {})),
        ("teacher (no pseudo-labels)", "random CLIP", runs.get("no_pseudo_random_teacher", {})),
    ]
    cols = ("AP-seen", "AP-unseen", "AP50-seen", "AP50-unseen", "seconds")
    return _table(title, "model", cols, rows)


def results_markdown(res: dict, command: str) -> str:
    """``results.md``: the toy CLIP and teacher, the students' tables, the baselines."""
    f = _f
    lines = [
        "# Offline world results",
        "",
        f"Split(s) {res['split']}, world seed {res['seed']}, mode {res['mode']}: `{command}`",
        "",
        f"- toy CLIP zero-shot shape accuracy: {f(res['clip']['zero_shot_accuracy'])}%",
        f"- MaskCLIP teacher object-pixel accuracy: {f(res['teacher']['object_pixel_accuracy'])}% "
        f"(chance {f(res['teacher']['chance_accuracy'])}%), mIoU {f(res['teacher']['mIoU'])}",
        "",
        "| student | CLIP | mIoU-seen | mIoU-unseen | hIoU | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for key, runs in res["students"].items():
        if key in OWN_PIPELINES:  # their own tables
            continue
        for variant, label in VARIANTS:
            r = runs[variant]
            lines.append(
                f"| {key} | {label} | {f(r.get('mIoU-seen'))} | {f(r.get('mIoU-unseen'))} "
                f"| {f(r.get('hIoU'))} | {f(r.get('seconds'))} |"
            )
    oracle, uniform = res["baselines"]["oracle_masks_random_names"], res["baselines"]["uniform"]
    lines += [
        f"| perfect masks, random names | - | - | {f(oracle['mIoU-unseen'])} "
        f"| {f(oracle['hIoU'])} | - |",
        f"| uniform random | - | - | {f(uniform['mIoU-unseen'])} | {f(uniform['hIoU'])} " "| - |",
    ]
    lines += _mask_table(res["students"])
    lines += xpm_markdown(res["students"])
    lines += ["", "![gallery](gallery.png)", ""]
    return "\n".join(lines)
