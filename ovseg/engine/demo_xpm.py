"""``make demo``'s XPM row (``tools/run_demo.py``): teacher -> caption pseudo instances ->
student, on the toy world's instances, for the toy CLIP and a random-weight one.

Per CLIP variant, each stage a subprocess (the two variants side by side):

1. the XPM teacher (``configs/toy/xpm_teacher_*.yaml``) trains on the seen shapes' instances
   through ``train_net.py``;
2. ``tools/generate_pseudo_labels.py`` with the student's config writes the teacher's
   caption pseudo instances of every training image into an instance store (every caption
   names every shape: XPM's setting, unseen shapes without masks);
3. the XPM student (``configs/toy/xpm_student_*.yaml``) starts from the teacher and trains
   on the seen ground truth plus that store.

Both models are evaluated on XPM's generalized set (``<split>_instance_val``: every shape,
AP per seen and unseen split; the unseen-only set is left out for time). The student without
pseudo-labels is the teacher itself (the same detector before any pseudo-label; its unseen
AP is zero-shot through CLIP's text), reported as ``no_pseudo``. Every stage is skipped when
its finished output matches (training: :func:`~ovseg.engine.train_runs.run_training`'s
record; generation: the store's fingerprint resumes it).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence

from .train_runs import run_training

__all__ = ["XPM_DEMO", "read_instance_metrics", "run_xpm", "xpm_world"]

logger = logging.getLogger("ovseg.demo")

TEACHER, STUDENT = "xpm_teacher_*.yaml", "xpm_student_*.yaml"
# per demo mode: the training images (None: the demo world's; else the first N of the same
# world: its images and val set do not depend on N), iterations and batch of each stage,
# the noise head's last iteration (1/7 of the student's, as 10k of the official 70k).
# Sized for make demo's budget (labelling costs ~0.1 s an image on one core)
XPM_DEMO = {
    "quick": {"num_train": None, "teacher_iters": 12, "student_iters": 12, "batch": 4,
              "noise_iters": 2},
    "default": {"num_train": 600, "teacher_iters": 300, "student_iters": 150, "batch": 8,
                "noise_iters": 21},
}  # fmt: skip
# the teacher's lr in the demo's short schedule: at 300 iterations (batch 8) 0.004 gave seen
# mask AP 0.059 / AP50 0.31 against Base-toy's 0.001's 0.007 / 0.05 (split a, seed 0)
TEACHER_LR = 0.004
# the reported keys of the generalized set's mask AP
KEYS = ("AP", "AP-seen", "AP-unseen", "AP50-seen", "AP50-unseen")


def read_instance_metrics(out_dir: Path) -> Dict[str, float]:
    """The mask AP of the last evaluation in ``metrics.json`` (:data:`KEYS`, None where
    missing), of its first test set."""
    records = [json.loads(x) for x in (out_dir / "metrics.json").read_text().splitlines()]
    evals = [r for r in records if any(k.endswith("segm/AP") for k in r)]
    if not evals:
        raise RuntimeError(f"{out_dir}/metrics.json holds no mask AP; see {out_dir}/log.txt")
    last = evals[-1]
    prefix = next(k for k in last if k.endswith("segm/AP"))[: -len("AP")]  # [<set>/]segm/
    return {k: None if last.get(prefix + k) is None else float(last[prefix + k]) for k in KEYS}


def _generate(config: Path, store: Path, opts: Sequence[str], root: Path, env) -> None:
    """tools/generate_pseudo_labels.py in a subprocess (resumes a store it made before)."""
    cmd = [sys.executable, "tools/generate_pseudo_labels.py", "--config-file"]
    cmd += [str(config.relative_to(root)), "--output", str(store), "--no-progress", *opts]
    log = store.parent / "generate.txt"
    logger.info("$ %s", " ".join(cmd[1:]))
    with open(log, "w") as f:
        if subprocess.run(cmd, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise RuntimeError(f"pseudo-label generation failed; see {log}")


def _pipeline(variant: str, extra: List[str], common: List[str], paths, root, env, mode) -> dict:
    """One CLIP variant's teacher, store and student; their metrics."""
    teacher_cfg, student_cfg, out = paths
    size = XPM_DEMO[mode]
    tag = "[toy] " if variant == "teacher" else "[random] "
    teacher_opts = [*common, *extra, "SOLVER.MAX_ITER", str(size["teacher_iters"])]
    teacher_opts += ["SOLVER.BASE_LR", str(TEACHER_LR)]
    teacher = run_training(
        teacher_cfg, out / "teacher", teacher_opts, root=root, env=env, tag=tag + "teacher ",
        reader=read_instance_metrics,
    )  # fmt: skip
    weights = out / "teacher" / "model_final.pth"
    store = out / "pseudo_instances"
    if not teacher.get("_reused") and store.exists():  # a new teacher: its labels are stale
        shutil.rmtree(store)
    _generate(student_cfg, store, [*common, *extra, "MODEL.XPM.TEACHER_WEIGHTS", str(weights)],
              root, env)  # fmt: skip
    student_opts = [*common, *extra, "SOLVER.MAX_ITER", str(size["student_iters"])]
    student_opts += ["MODEL.XPM.NOISE_FREEZE_ITER", str(size["noise_iters"])]
    student_opts += [
        "MODEL.XPM.TEACHER_WEIGHTS",
        str(weights),
        "DATASETS.PSEUDO_LABELS",
        str(store),
    ]
    student = run_training(
        student_cfg, out / "student", student_opts, root=root, env=env, tag=tag + "student ",
        reader=read_instance_metrics,
    )  # fmt: skip
    student["seconds"] = round(student.get("seconds", 0) + teacher.get("seconds", 0), 1)
    return {"student": student, "teacher": teacher}


def xpm_world(datasets_root: Path, mode: str, seed: int, num_val: int) -> Path:
    """The dataset root the XPM row reads: the demo world's, or one holding the first
    ``num_train`` training images of the same world (the same val images)."""
    from ..data.datasets.toy_world import build_toy_world

    num_train = XPM_DEMO[mode]["num_train"]
    if num_train is None:
        return datasets_root
    root = datasets_root.parent / f"{datasets_root.name}_xpm{num_train}"
    build_toy_world(str(root), num_train=num_train, num_val=num_val, seed=seed)
    return root


def run_xpm(split_prefix: str, mode: str, root: Path, out_root: Path, env, jobs: int = 2) -> dict:
    """The XPM row of one zero-shot split (``split_prefix``: ``toy_world`` or
    ``toy_world_b``), on the world under ``env["DETECTRON2_DATASETS"]``.

    Returns:
        dict: ``teacher`` and ``random_teacher`` (the students with the toy and the random
        CLIP), ``no_pseudo`` and ``no_pseudo_random_teacher`` (their teachers), each with
        the generalized set's :data:`KEYS` and seconds; the configs as ``config``.
    """
    configs = root / "configs/toy"
    teacher_cfg, student_cfg = sorted(configs.glob(TEACHER))[0], sorted(configs.glob(STUDENT))[0]
    train, val = f"{split_prefix}_instance_train", f"{split_prefix}_instance_val"
    size = XPM_DEMO[mode]
    common = ["DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{val}',)"]
    common += ["SOLVER.IMS_PER_BATCH", str(size["batch"]), "SOLVER.CHECKPOINT_PERIOD", "100000"]
    variants = {"teacher": [], "random_teacher": ["MODEL.CLIP.PRETRAINED", ""]}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            v: pool.submit(
                _pipeline,
                v,
                extra,
                common,
                (teacher_cfg, student_cfg, out_root / v),
                root,
                env,
                mode,
            )  # fmt: skip
            for v, extra in variants.items()
        }
        runs = {v: f.result() for v, f in futures.items()}
    rel = str(student_cfg.relative_to(root))
    out = {v: {**r["student"], "config": rel} for v, r in runs.items()}
    rel = str(teacher_cfg.relative_to(root))
    out["no_pseudo"] = {**runs["teacher"]["teacher"], "config": rel}
    out["no_pseudo_random_teacher"] = {**runs["random_teacher"]["teacher"], "config": rel}
    return out
