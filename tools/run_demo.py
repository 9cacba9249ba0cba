#!/usr/bin/env python
"""The offline world end to end: ``make demo`` (README's main command).

1. writes the toy world (cached by its parameters);
2. measures the toy CLIP (image-level zero-shot accuracy) and the training-free MaskCLIP
   teacher (object-pixel accuracy against chance, mIoU);
3. for every student with a ``configs/toy/<method>*.yaml`` and a registered meta-architecture,
   trains and evaluates it through ``train_net.py`` twice: with the trained toy CLIP, and with a
   random-weight CLIP of the same architecture (the ablation that removes the knowledge and
   keeps everything else);
4. writes ``results.json``, ``results.md`` and ``gallery.png`` under ``--output``.

``--quick`` (``make demo QUICK=1``) uses a tiny world and few iterations (CI); ``--full``
(``FULL=1``) runs both zero-shot splits and averages them; ``--retrain-clip``
(``RETRAIN_CLIP=1``) retrains the toy CLIP with the options recorded in its checkpoint (read
as data; only tools/pretrain_toy_clip.py is ever run, with options its parser accepts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

# isort: off
# ovseg first: it registers datasets, mappers and models, and imports detectron2 without the
# torch.jit deprecation warnings of fvcore's import (ovseg/__init__.py)
import ovseg  # noqa: F401

# isort: on
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from ovseg.data import build_dataset_mapper
from ovseg.data.datasets.toy_world import SPLITS, build_toy_world
from ovseg.engine.checkpoint import load_model_weights
from ovseg.engine.defaults import load_config
from ovseg.engine.demo_results import average_splits, results_markdown
from ovseg.engine.demo_students import (  # noqa: F401  (the tests read the table from here)
    OWN_PIPELINES,
    SPLIT_DATASETS,
    STUDENTS,
    Student,
    select_students,
    split_datasets,
    start_checkpoint,
)
from ovseg.engine.demo_xpm import run_xpm, xpm_world
from ovseg.engine.train_runs import run_training
from ovseg.evaluation import segmentation_metrics
from ovseg.evaluation.baselines import oracle_masks_random_names, uniform_baseline
from ovseg.utils.io import atomic_write_text, make_output_folder
from ovseg.utils.safe_load import torch_load_weights

ROOT = Path(__file__).resolve().parents[1]  # configs and train_net.py are found from here
logger = logging.getLogger("ovseg.demo")

TEACHER_CONFIG = "configs/toy/maskclip.yaml"


SIZES = {  # world and schedule per mode
    "quick": {"num_train": 120, "num_val": 24, "max_iter": 12, "batch": 4},
    "default": {"num_train": 2000, "num_val": 200, "max_iter": None, "batch": None},
}
GALLERY_IMAGES = 4
# per meta-architecture overrides: MaskCLIP+ has the teacher label each augmented training
# image in the loop (the official MaskCLIP+ way), so the demo keeps no pseudo-label store per
# CLIP variant; the store path is covered by the tests and tools/generate_pseudo_labels.py
ARCH_OPTS = {
    "MaskCLIPPlus": [
        "MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE", "online_augmented",
        "DATASETS.PSEUDO_LABELS", "",
    ],
}  # fmt: skip
CLIP_KEYS = ("zero_shot_accuracy", "retrieval_r1", "dense_object_accuracy")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="output/demo", help="where results and runs go")
    p.add_argument("--datasets-root", default="", help="toy world root (default: per mode)")
    p.add_argument("--quick", action="store_true", help="tiny world, few iterations (CI)")
    p.add_argument("--full", action="store_true", help="both zero-shot splits, averaged")
    p.add_argument("--retrain-clip", action="store_true", help="retrain the toy CLIP first")
    p.add_argument("--seed", type=int, default=0, help="seed of the world")
    p.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="students to run, comma- or space-separated (make demo STUDENTS=lseg,zegclip); "
        f"default: {', '.join(select_students(None))}",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="trainings at a time: a student's two CLIP variants run side by side, each on "
        "one thread (default: 2, or 1 on a 1-core machine)",
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: need >= 1")
    try:
        args.methods = select_students(args.methods)
    except ValueError as e:
        p.error(f"--methods: {e}")
    return args


# ------------------------------------------------------------------------------- helpers
def clip_settings(config: str) -> tuple[str, str]:
    cfg = load_config(str(ROOT / config))
    return cfg.MODEL.CLIP.MODEL_NAME, cfg.MODEL.CLIP.PRETRAINED


PRETRAIN_TOOL = "tools/pretrain_toy_clip.py"


def retrain_clip(checkpoint: str) -> None:
    """Retrain the toy CLIP with the options recorded in the shipped checkpoint.

    The checkpoint is read as data (``torch.load(weights_only=True)``) and its recorded
    command is never executed: only its options are taken, checked by
    tools/pretrain_toy_clip.py's own parser and run by that tool, in this process.
    """
    meta = torch_load_weights(ROOT / checkpoint).get("ovseg_pretrain", {})
    command = meta.get("command") if isinstance(meta, dict) else None
    if not isinstance(command, str) or not command:
        raise SystemExit(f"{checkpoint} records no training command; see checkpoints/README.md")
    argv = shlex.split(command)
    tool = next((i for i, a in enumerate(argv) if a.endswith(PRETRAIN_TOOL)), None)
    if tool is None:
        raise SystemExit(
            f"{checkpoint} records a command that is not {PRETRAIN_TOOL} ({command!r}): "
            "refused; retrain with that tool by hand (checkpoints/README.md)."
        )
    options = argv[tool + 1 :]
    if "--resume" not in options:  # an interrupted retraining continues; a finished one exports
        options.append("--resume")
    logger.info("Retraining the toy CLIP: python %s %s", PRETRAIN_TOOL, shlex.join(options))
    pretrain_main = _load_tool(PRETRAIN_TOOL).main
    cwd = os.getcwd()
    os.chdir(ROOT)  # the recorded paths are relative to the repository root
    try:
        pretrain_main(options)
    finally:
        os.chdir(cwd)


def _load_tool(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ovseg_tool_" + Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate_clip(config: str, seed: int, num_images: int) -> dict:
    """Image-level zero-shot metrics of the config's CLIP (ovseg.clip.toy_evaluation)."""
    from ovseg.clip import build_clip_teacher
    from ovseg.clip.toy_evaluation import evaluate_toy_clip

    teacher = build_clip_teacher(load_config(str(ROOT / config)))
    return evaluate_toy_clip(teacher, seed=seed, num_images=num_images)


def predict(cfg, dataset: str, weights: str = "", limit: int | None = None):
    """Run a model over a dataset in-process; yield (input dict, label or None, scores)."""
    model = build_model(cfg)
    if weights:
        load_model_weights(model, weights, cfg=cfg)
    model.eval()
    mapper = build_dataset_mapper(cfg, False, dataset)
    dicts = DatasetCatalog.get(dataset)[:limit]
    with torch.no_grad():
        for d in dicts:
            sample = mapper(dict(d))
            scores = model([sample])[0]["sem_seg"]
            yield sample, scores


def evaluate_teacher(split: str, datasets_root: Path) -> tuple[dict, list]:
    """MaskCLIP zero-shot on the val split: object-pixel accuracy over the shapes, mIoU."""
    _, val = SPLIT_DATASETS[split]
    cfg = load_config(str(ROOT / TEACHER_CONFIG), ["DATASETS.TEST", f"('{val}',)"])
    meta = MetadataCatalog.get(val)
    names, k = meta.stuff_classes, len(meta.stuff_classes)
    conf = np.zeros((k, k), np.int64)
    correct = total = 0
    gallery = []
    for i, (sample, scores) in enumerate(predict(cfg, val)):
        gt = sample["sem_seg"].numpy()
        pred = scores.argmax(0).numpy()
        valid = gt != meta.ignore_label
        conf += np.bincount(gt[valid] * k + pred[valid], minlength=k * k).reshape(k, k)
        # shape accuracy on object pixels: argmax over the shapes only (index 0 = background)
        shape_pred = scores[1:].argmax(0).numpy() + 1
        obj = valid & (gt > 0)
        correct += int((shape_pred[obj] == gt[obj]).sum())
        total += int(obj.sum())
        if i < GALLERY_IMAGES:
            gallery.append((sample, pred))
    metrics = segmentation_metrics(conf, names, unseen=meta.unseen_classes)
    return {
        "object_pixel_accuracy": 100.0 * correct / max(total, 1),
        "chance_accuracy": 100.0 / (k - 1),
        "mIoU": metrics["mIoU"],
        "mIoU-unseen": metrics.get("mIoU-unseen"),
    }, gallery


def run_students(split, mode, args, datasets_root, clip_name, out_root, env) -> dict:
    results = {}
    for student in STUDENTS:
        train, val = split_datasets(split, student.data)
        key, pattern, parent = student.key, student.configs, student.parent
        if key not in args.methods or key in OWN_PIPELINES:
            continue
        configs = sorted((ROOT / "configs/toy").glob(pattern))
        if not configs:
            continue
        arch = load_config(str(configs[0])).MODEL.META_ARCHITECTURE
        if arch not in META_ARCH_REGISTRY:
            logger.info("skipping %s: meta-architecture %s is not built yet", key, arch)
            continue
        opts = ["DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{val}',)"]
        opts += ARCH_OPTS.get(arch, [])
        if mode == "default":
            opts += list(student.demo_opts)
        if SIZES[mode]["batch"]:
            opts += ["SOLVER.IMS_PER_BATCH", str(SIZES[mode]["batch"])]
        if SIZES[mode]["max_iter"]:
            n = SIZES[mode]["max_iter"]
            # a checkpoint at the halfway point too, where a second stage may start
            opts += [
                "SOLVER.MAX_ITER",
                str(n),
                "SOLVER.WARMUP_ITERS",
                str(n // 5),
                "SOLVER.CHECKPOINT_PERIOD",
                str(n // 2),
            ]
        if parent is not None and parent not in results:
            logger.info("skipping %s: it starts from %s, which did not run", key, parent)
            continue
        runs = {}
        for variant, extra in (("teacher", []), ("random_teacher", ["MODEL.CLIP.PRETRAINED", ""])):
            logger.info("[%s] split %s, %s (%s)", key, split, variant, configs[0].name)
            out = out_root / f"split_{split}" / key / variant
            reuse = True
            if parent is not None:
                parent_config = ROOT / results[parent][variant]["config"]
                start = (
                    out_root
                    / f"split_{split}"
                    / parent
                    / variant
                    / start_checkpoint(configs[0], parent_config, SIZES[mode]["max_iter"])
                )
                extra = extra + ["MODEL.WEIGHTS", str(start)]
                reuse = results[parent][variant].get("_reused", False)  # parent unchanged
            tag = "[toy] " if variant == "teacher" else "[random] "
            runs[variant] = dict(
                config=configs[0], out_dir=out, opts=opts + extra, env=env, reuse=reuse, tag=tag
            )
        # the two variants are independent: side by side on two cores (--jobs)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {v: pool.submit(run_training, root=ROOT, **a) for v, a in runs.items()}
            results[key] = {v: f.result() for v, f in futures.items()}
        for metrics in results[key].values():
            metrics["config"] = str(configs[0].relative_to(ROOT))
        weights = out_root / f"split_{split}" / key / "teacher" / "model_final.pth"
        results[key]["_weights"] = str(weights)
        results[key]["_opts"] = opts
    return results


def baselines(split: str) -> dict:
    from PIL import Image

    _, val = SPLIT_DATASETS[split]
    meta = MetadataCatalog.get(val)
    labels = [np.asarray(Image.open(d["sem_seg_file_name"])) for d in DatasetCatalog.get(val)]
    kw = {"unseen": meta.unseen_classes, "ignore_label": meta.ignore_label}
    uni = uniform_baseline(labels, meta.stuff_classes, **kw)
    oracle = oracle_masks_random_names(labels, meta.stuff_classes, **kw)
    return {
        "uniform": {"mIoU-unseen": uni["mIoU-unseen"], "hIoU": uni["hIoU"]},
        "oracle_masks_random_names": {"mIoU-unseen": oracle["mIoU-unseen"], "hIoU": oracle["hIoU"]},
    }


def gallery(split: str, teacher_rows: list, students: dict, path: Path) -> None:
    """One row per validation image: image, ground truth, teacher, each student."""
    from ovseg.utils.figures import panel_row, save_image
    from ovseg.utils.visualization import draw_semantic

    _, val = SPLIT_DATASETS[split]
    meta = MetadataCatalog.get(val)
    unseen = meta.unseen_classes
    student_preds = {}
    data = {s.key: s.data for s in STUDENTS}
    for key, res in students.items():
        opts = list(res["_opts"])
        if data[key] != "sem_seg":  # the gallery's images are the semantic val set's
            opts += ["INPUT.DATASET_MAPPER_NAME", "ovseg_semantic"]
        cfg = load_config(str(ROOT / res["teacher"]["config"]), opts)
        preds = predict(cfg, val, weights=res["_weights"], limit=len(teacher_rows))
        student_preds[key] = [s.argmax(0).numpy() for _, s in preds]
    rows = []
    for i, (sample, teacher_pred) in enumerate(teacher_rows):
        image = sample["image"].permute(1, 2, 0).numpy().astype(np.uint8)
        gt = sample["sem_seg"].numpy()

        def draw(label, image=image):
            vis = draw_semantic(
                image, label, meta, ignore_label=meta.ignore_label, unseen=unseen, scale=4.0
            )
            return vis.get_image()

        big = np.kron(image, np.ones((4, 4, 1), np.uint8))
        panels = [("image", big), ("ground truth", draw(gt)), ("teacher", draw(teacher_pred))]
        panels += [(key, draw(preds[i])) for key, preds in student_preds.items()]
        rows.append(panel_row(panels, panel_height=192))
    width = max(r.shape[1] for r in rows)
    canvas = np.concatenate(
        [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    )
    save_image(str(path), canvas)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[demo %(asctime)s] %(message)s", datefmt="%H:%M:%S"
    )
    mode = "quick" if args.quick else "default"
    out_root = (ROOT / args.output).resolve()
    try:
        make_output_folder(out_root)
    except OSError as e:
        raise SystemExit(f"run_demo.py: error: --output: {e}") from None
    datasets_root = Path(args.datasets_root or ROOT / ".cache" / f"toy_world_{mode}").resolve()
    os.environ["DETECTRON2_DATASETS"] = str(datasets_root)
    build_toy_world(
        str(datasets_root),
        num_train=SIZES[mode]["num_train"],
        num_val=SIZES[mode]["num_val"],
        seed=args.seed,
    )
    from ovseg.data.datasets.toy_world import register_all_toy_world

    register_all_toy_world(str(datasets_root))  # registration read the env at import time
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))
    # one intra-op thread per run: these models are tiny, and on 2 shared cores two threads
    # per process were 3-5x slower (override by exporting OMP_NUM_THREADS)
    env.setdefault("OMP_NUM_THREADS", "1")
    clip_name, clip_weights = clip_settings(TEACHER_CONFIG)
    if args.retrain_clip:
        retrain_clip(clip_weights)
    if not (ROOT / clip_weights).is_file():
        raise SystemExit(
            f"The toy CLIP checkpoint {clip_weights} is missing: run make demo "
            "RETRAIN_CLIP=1 (or git checkout the shipped one)."
        )

    start = time.time()
    logger.info("Toy CLIP: image-level zero-shot accuracy")
    clip = evaluate_clip(TEACHER_CONFIG, args.seed, SIZES[mode]["num_val"])
    splits = sorted(SPLITS) if args.full else ["a"]
    per_split = {}
    for split in splits:
        logger.info("Split %s (unseen: %s): MaskCLIP teacher", split, ", ".join(SPLITS[split]))
        teacher, rows = evaluate_teacher(split, datasets_root)
        students = run_students(split, mode, args, datasets_root, clip_name, out_root, env)
        per_split[split] = {"teacher": teacher, "students": students, "baselines": baselines(split)}
        if split == splits[0]:
            gallery(split, rows, students, out_root / "gallery.png")
        if "xpm" in args.methods:  # after the gallery, which draws semantic students
            prefix = "toy_world" if split == "a" else f"toy_world_{split}"
            xpm_out = out_root / f"split_{split}" / "xpm"
            world = xpm_world(datasets_root, mode, args.seed, SIZES[mode]["num_val"])
            xpm_env = dict(env, DETECTRON2_DATASETS=str(world))
            students["xpm"] = run_xpm(prefix, mode, ROOT, xpm_out, xpm_env, args.jobs)
    res = average_splits(per_split)
    res.update(
        {
            "clip": {k: clip[k] for k in CLIP_KEYS},
            "split": splits[0] if len(splits) == 1 else splits,
            "seed": args.seed,
            "mode": mode,
            "seconds": round(time.time() - start, 1),
            "per_split": {s: average_splits({s: r}) for s, r in per_split.items()},
        }
    )
    command = "make demo" + (" QUICK=1" if args.quick else "") + (" FULL=1" if args.full else "")
    atomic_write_text(
        out_root / "results.json", json.dumps(res, indent=1, sort_keys=True), fsync=False
    )
    atomic_write_text(out_root / "results.md", results_markdown(res, command), fsync=False)
    print((out_root / "results.md").read_text())
    logger.info("Wrote %s/results.{json,md} and gallery.png in %.0f s", out_root, res["seconds"])
    return res


if __name__ == "__main__":
    main()
