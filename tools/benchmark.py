#!/usr/bin/env python
"""Speed benchmarks, one subcommand per component or method.

Examples:
    python tools/benchmark.py teacher --model ViT-B-16 --size 512 512 --batch 2
    python tools/benchmark.py teacher --model configs/clip/tiny_vit.json --size 64 64
    python tools/benchmark.py maskclip_plus --image-size 384 512 --crop 384 --batch 2
    python tools/benchmark.py zegclip --batch 16 --size 512 --precision bf16 --device cuda

Each subcommand registers itself in ``SUBCOMMANDS`` (name -> function adding its parser);
its parser sets ``func``, which takes the parsed arguments and returns a dict of results.
Timings run under ``torch.inference_mode`` after warm-up iterations, synchronising CUDA
around each timed call, and report the median over ``--iters`` calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # subcommands in their own files

from benchmark_utils import default_device, synchronize  # noqa: E402
from benchmark_zegclip import add_zegclip_parser  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402

from ovseg import add_ovseg_config  # noqa: E402
from ovseg.clip import build_clip_teacher, get_templates  # noqa: E402
from ovseg.clip.dense import pad_to_multiple, resize_pos_embed  # noqa: E402
from ovseg.modeling.meta_arch.maskclip import MaskCLIP  # noqa: E402
from ovseg.vocab import resolve_vocabulary  # noqa: E402

SUBCOMMANDS: Dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def subcommand(name: str):
    """Register ``fn(subparsers)`` that adds the parser of subcommand ``name``."""

    def register(fn):
        SUBCOMMANDS[name] = fn
        return fn

    return register


# ---------------------------------------------------------------------- shared helpers
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def time_calls(
    fns: Dict[str, Callable[[], object]],
    device: torch.device,
    iters: int,
    warmup: int,
    clock: str = "wall",
) -> Dict[str, float]:
    """Median seconds of one call of each function, after ``warmup`` untimed calls of each.

    The functions take turns within every iteration, so load from other processes on a
    shared machine spreads over all of them instead of biasing whichever runs last.
    ``clock="process"`` counts this process's CPU time (all its threads) instead of wall
    time: on a CPU shared with other jobs it measures the work, not the waiting.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock {clock!r} is not one of {sorted(CLOCKS)}")
    if clock == "process" and device.type == "cuda":
        raise ValueError("--clock process measures CPU time; use --clock wall on CUDA")
    now = CLOCKS[clock]
    times: Dict[str, list] = {name: [] for name in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(iters):
            for name, fn in fns.items():
                synchronize(device)
                start = now()
                fn()
                synchronize(device)
                times[name].append(now() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------------- teacher
@contextlib.contextmanager
def positional_embedding_for(visual: nn.Module, images: torch.Tensor, stride: int):
    """Temporarily give a vision tower positional embeddings for the images' size.

    Lets the tower's own ``forward`` (full attention in every block, class-token or
    attention pooling) run on exactly the tokens ``dense_embeddings`` sees.
    """
    grid = (images.shape[-2] // stride, images.shape[-1] // stride)
    owner = visual.attnpool if hasattr(visual, "attnpool") else visual
    old = owner.positional_embedding
    if hasattr(visual, "attnpool"):
        side = int(round((old.shape[0] - 1) ** 0.5))
        old_grid = (side, side)
    else:
        old_grid = tuple(visual.grid_size)
    new = resize_pos_embed(old.detach(), old_grid, grid)
    owner.positional_embedding = nn.Parameter(new, requires_grad=False)
    try:
        yield
    finally:
        owner.positional_embedding = old


def _teacher_cfg(args):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.CLIP.MODEL_NAME = args.model
    cfg.MODEL.CLIP.PRETRAINED = args.pretrained
    cfg.MODEL.CLIP.PRECISION = args.precision
    cfg.MODEL.CLIP.TEMPLATES = args.templates
    if args.cache_dir:
        cfg.MODEL.CLIP.CACHE_DIR = args.cache_dir
    return cfg


def _pseudo_store_rate(model: MaskCLIP, images: torch.Tensor, names, iters: int) -> float:
    """Images/s of ``ovseg.pseudo.generate_pseudo_labels`` on JPEGs of the benchmark images:
    read, map, label, write label + confidence PNGs into a fresh store."""
    from PIL import Image

    from ovseg.data.dataset_mappers.semantic import SemanticDatasetMapper
    from ovseg.pseudo import PseudoLabelStore, build_manifest, generate_pseudo_labels

    mapper = SemanticDatasetMapper(
        is_train=False,
        augmentations=[],
        image_format="RGB",
        ignore_label=255,
        size_divisibility=-1,
        vocabulary=names,
    )
    with tempfile.TemporaryDirectory() as tmp:
        dicts = []
        for i in range(max(iters, 1) * images.shape[0]):
            path = os.path.join(tmp, f"{i:06d}.jpg")
            array = images[i % images.shape[0]].permute(1, 2, 0).cpu().numpy()
            Image.fromarray(array.astype(np.uint8)).save(path, quality=95)
            dicts.append({"file_name": path, "image_id": f"{i:06d}"})
        manifest = build_manifest(
            fingerprint="benchmark", teacher={}, vocabulary=names, threshold=0.0, dataset="bench"
        )
        store = PseudoLabelStore.create(os.path.join(tmp, "store"), manifest)
        synchronize(model.device)
        start = time.perf_counter()
        generate_pseudo_labels(model, dicts, mapper, store, threshold=0.0, progress=False)
        synchronize(model.device)
        return len(dicts) / (time.perf_counter() - start)


def run_teacher(args) -> dict:
    device = torch.device(args.device)
    cfg = _teacher_cfg(args)
    teacher = build_clip_teacher(cfg, device=args.device)
    h, w = args.size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, h, w), generator=g, dtype=torch.uint8)
    x = images.to(device).float()
    stride = teacher.stride
    visual = teacher.model.visual

    def plain_forward():
        # the same normalisation, padding and positional-embedding interpolation as
        # dense_embeddings, then the tower's own forward
        xn = pad_to_multiple((x - teacher.pixel_mean) / teacher.pixel_std, stride)
        with positional_embedding_for(visual, xn, stride), teacher._autocast():
            return visual(xn)

    timing = dict(device=device, iters=args.iters, warmup=args.warmup, clock=args.clock)
    t = time_calls(
        {
            "dense": lambda: teacher.dense_embeddings(x),
            "dense_keys": lambda: teacher.dense_embeddings(x, return_keys=True),
            "plain": plain_forward,
            "encode": lambda: teacher.encode_image(x),
        },
        **timing,
    )
    t_dense, t_keys, t_plain, t_encode = t["dense"], t["dense_keys"], t["plain"], t["encode"]

    names = resolve_vocabulary(args.vocabulary).names
    model = MaskCLIP(
        teacher=teacher,
        templates=get_templates(args.templates),
        vocabulary=names,
        prompt_denoise=True,
        key_smoothing=True,
    ).eval()
    model.text_embeddings(names)  # computed once per vocabulary, not part of labelling
    inputs = [{"image": im, "height": h, "width": w} for im in images]

    def label():
        return [out["sem_seg"].argmax(dim=0) for out in model(inputs)]

    t_label = time_calls({"label": label}, **timing)["label"]
    res = {
        "model": args.model,
        "pretrained": args.pretrained,
        "device": str(device),
        "precision": args.precision,
        "clock": args.clock,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "size": [h, w],
        "grid": [-(-h // stride), -(-w // stride)],
        "dense_s": t_dense,
        "dense_keys_s": t_keys,
        "plain_forward_same_tokens_s": t_plain,
        "encode_image_s": t_encode,
        "ratio_dense_vs_plain_same_tokens": t_dense / t_plain,
        "ratio_dense_keys_vs_plain_same_tokens": t_keys / t_plain,
        "ratio_dense_vs_encode_image": t_dense / t_encode,
        "maskclip_label_images_per_s": args.batch / t_label,
        "vocabulary_size": len(names),
    }
    if args.store:
        try:
            res["pseudo_store_images_per_s"] = _pseudo_store_rate(model, images, names, args.iters)
        except ImportError as e:
            res["pseudo_store_images_per_s"] = None
            res["pseudo_store_error"] = f"ovseg.pseudo unavailable: {e}"
    _print_teacher(res, teacher.image_size)
    return res


def _print_teacher(r: dict, model_size) -> None:
    b, (h, w), (gh, gw) = r["batch"], r["size"], r["grid"]
    print(
        f"teacher {r['model']} ({r['pretrained'] or 'random init'}) on {r['device']}, "
        f"{r['precision']}, batch {b} x {h}x{w} (grid {gh}x{gw}); median {r['clock']} time, "
        f"{r['threads']} CPU threads"
    )
    rows = [
        ("dense_embeddings", f"{1000 * r['dense_s']:.2f} ms"),
        ("dense_embeddings(return_keys=True)", f"{1000 * r['dense_keys_s']:.2f} ms"),
        ("tower forward on the same tokens", f"{1000 * r['plain_forward_same_tokens_s']:.2f} ms"),
        (
            f"encode_image (resized to {model_size[0]}x{model_size[1]})",
            f"{1000 * r['encode_image_s']:.2f} ms",
        ),
        (
            "dense / forward on same tokens",
            f"{r['ratio_dense_vs_plain_same_tokens']:.3f}x (goal <= 1.1x)",
        ),
        (
            "dense+keys / forward on same tokens",
            f"{r['ratio_dense_keys_vs_plain_same_tokens']:.3f}x",
        ),
        ("dense / encode_image", f"{r['ratio_dense_vs_encode_image']:.3f}x"),
        (
            f"MaskCLIP labelling, {r['vocabulary_size']} classes",
            f"{r['maskclip_label_images_per_s']:.2f} images/s (PD+KS forward + argmax)",
        ),
    ]
    if "pseudo_store_images_per_s" in r:
        rate = r["pseudo_store_images_per_s"]
        text = f"{rate:.2f} images/s" if rate is not None else r["pseudo_store_error"]
        rows.append(("pseudo-label store", f"{text} (read JPEG, map, label, write 2 PNGs)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


@subcommand("teacher")
def add_teacher_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "teacher",
        help="CLIP teacher: dense_embeddings vs a plain forward, pseudo-labelling images/s",
        description=(
            "Times, on one random batch: dense_embeddings (MaskCLIP's last-block rule) with "
            "and without keys; the vision tower's own forward on the same padded input and "
            "so the same tokens (positional embeddings interpolated as dense_embeddings "
            "does; full attention in every block, pooled output); encode_image (input "
            "resized to the model size); MaskCLIP labelling (prompt denoising + key "
            "smoothing forward at the input size, argmax per image); and with --store the "
            "ovseg.pseudo generation loop writing a store."
        ),
    )
    p.add_argument(
        "--model",
        default="configs/clip/tiny_vit.json",
        help="open_clip model name or JSON model config",
    )
    p.add_argument("--pretrained", default="", help="tag, checkpoint path, or '' (random)")
    p.add_argument("--cache-dir", default="", help="MODEL.CLIP.CACHE_DIR ('' = default)")
    p.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default=default_device())
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--clock",
        default="wall",
        choices=sorted(CLOCKS),
        help="wall time, or this process's CPU time (for CPUs shared with other jobs)",
    )
    p.add_argument(
        "--vocabulary",
        default="voc20",
        help="labelling vocabulary: builtin name, .json or comma list",
    )
    p.add_argument("--templates", default="single", help="prompt-template set for the text")
    p.add_argument(
        "--store",
        action="store_true",
        help="also time ovseg.pseudo.generate_pseudo_labels into a temporary store",
    )
    p.set_defaults(func=run_teacher)


# ---------------------------------------------------------------------- maskclip_plus
MASKCLIP_PLUS_CONFIG = (
    "configs/voc/maskclip_plus/maskclip_plus_vitb16_r101_deeplabv2_transductive_20k_bs16.yaml"
)


def _maskclip_plus_batch(cfg, model, folder: str, args) -> list:
    """``args.batch`` random JPEGs with labels (a seen class, an unseen square), their store
    made by the generation code, and one training batch mapped by the config's training
    mapper with its transforms recorded: the same samples serve both sources."""
    from PIL import Image

    from ovseg.data import build_dataset_mapper
    from ovseg.modeling.meta_arch.maskclip_plus_build import scored_names, training_vocabulary
    from ovseg.modeling.meta_arch.maskclip_plus_targets import record_transforms
    from ovseg.pseudo import (
        PseudoLabelStore,
        attach_pseudo_labels,
        build_manifest,
        generate_pseudo_labels,
    )

    names, unseen = training_vocabulary(cfg)
    scored = list(scored_names(cfg))
    rng = np.random.default_rng(0)
    h, w = args.image_size
    dicts = []
    for i in range(args.batch):
        label = np.zeros((h, w), np.uint8)
        label[h // 4 : h // 2, w // 4 : w // 2] = names.index(unseen[0]) if unseen else 1
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        paths = [os.path.join(folder, f"{i:04d}.{ext}") for ext in ("jpg", "png")]
        Image.fromarray(image).save(paths[0], quality=95)
        Image.fromarray(label).save(paths[1])
        dicts.append({"file_name": paths[0], "sem_seg_file_name": paths[1], "image_id": f"{i:04d}"})
    dataset = cfg.DATASETS.TRAIN[0]
    threshold = cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD
    manifest = build_manifest(
        fingerprint="benchmark", teacher={}, vocabulary=scored, threshold=threshold, dataset=dataset
    )
    store = PseudoLabelStore.create(os.path.join(folder, "store"), manifest)
    model.pseudo_label_store = store.root  # checked against the config at the first step
    test_mapper = build_dataset_mapper(cfg, False, dataset)
    generate_pseudo_labels(
        model.labeller,
        dicts,
        lambda d: {**test_mapper(d), "vocabulary": scored},
        store,
        threshold=threshold,
        progress=False,
    )
    mapper = record_transforms(build_dataset_mapper(cfg, True, dataset))
    return [mapper(d) for d in attach_pseudo_labels(dicts, store)]


def run_maskclip_plus(args) -> dict:
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from ovseg.data import build_dataset_mapper
    from ovseg.engine.defaults import load_config

    device = torch.device(args.device)
    h, w = args.image_size
    size = min(h, w)
    opts = [
        "MODEL.DEVICE", args.device,
        "MODEL.CLIP.PRETRAINED", args.pretrained,
        "MODEL.WEIGHTS", "",
        "MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE", "store",
        "MODEL.MASKCLIP_PLUS.SELF_TRAIN_START", "-1",
        "INPUT.MIN_SIZE_TRAIN", f"({size},)",
        "INPUT.MAX_SIZE_TRAIN", str(max(h, w)),
        "INPUT.MIN_SIZE_TEST", str(size),
        "INPUT.MAX_SIZE_TEST", str(max(h, w)),
        "INPUT.CROP.SIZE", f"({args.crop}, {args.crop})",
    ]  # fmt: skip
    cfg = load_config(args.config_file, opts + list(args.opts))
    if args.cache_dir:
        cfg.MODEL.CLIP.CACHE_DIR = args.cache_dir
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    now = CLOCKS[args.clock]
    with tempfile.TemporaryDirectory() as tmp:
        batch = _maskclip_plus_batch(cfg, model, tmp, args)
        sources = {
            "store": None,
            args.online: build_dataset_mapper(cfg, False, cfg.DATASETS.TRAIN[0]),
        }
        times: Dict[str, list] = {name: [] for name in sources}
        with EventStorage(0):
            for i in range(args.warmup + args.iters):
                for source, mapper in sources.items():  # take turns: shared-CPU load spreads
                    model.pseudo_label_source, model.online_mapper = source, mapper
                    synchronize(device)
                    start = now()
                    loss = sum(model(batch).values())
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    synchronize(device)
                    if i >= args.warmup:
                        times[source].append(now() - start)
    t_store = statistics.median(times["store"])
    t_online = statistics.median(times[args.online])
    res = {
        "config": args.config_file,
        "opts": list(args.opts),
        "device": str(device),
        "clock": args.clock,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "image_size": [h, w],
        "crop": args.crop,
        "online_source": args.online,
        "store_step_s": t_store,
        "online_step_s": t_online,
        "speedup_store_vs_online": t_online / t_store,
        "teacher_share_of_online_step": 1 - t_store / t_online,
    }
    print(
        f"MaskCLIP+ train step ({args.config_file}), batch {args.batch} of {h}x{w} images, "
        f"{args.crop} crops, {args.device}, median {args.clock} time, {res['threads']} threads:\n"
        f"  store (DATASETS.PSEUDO_LABELS)   {1000 * t_store:.1f} ms\n"
        f"  teacher in the loop ({args.online})  {1000 * t_online:.1f} ms\n"
        f"  store speed-up                  {res['speedup_store_vs_online']:.2f}x (goal >= 3x)"
    )
    return res


@subcommand("maskclip_plus")
def add_maskclip_plus_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "maskclip_plus",
        help="MaskCLIP+: training step with the pseudo-label store vs the teacher in the loop",
        description=(
            "Times one MaskCLIP+ training step (forward, targets, backward, SGD step) on the "
            "same model and batch with the teacher's labels read from a store (generated "
            "beforehand, as tools/generate_pseudo_labels.py does) and computed in the loop "
            "('online': the teacher labels each original image; 'online_augmented': each "
            "crop). Random images and random weights: speed only."
        ),
    )
    p.add_argument("--config-file", default=MASKCLIP_PLUS_CONFIG, help="a MaskCLIP+ config")
    p.add_argument("--pretrained", default="", help="MODEL.CLIP.PRETRAINED ('' = random)")
    p.add_argument("--cache-dir", default="", help="MODEL.CLIP.CACHE_DIR ('' = default)")
    p.add_argument("--image-size", type=int, nargs=2, default=(384, 512), metavar=("H", "W"))
    p.add_argument("--crop", type=int, default=384, help="training crop side")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--online", default="online", choices=("online", "online_augmented"))
    p.add_argument("--device", default=default_device())
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--clock", default="wall", choices=sorted(CLOCKS))
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config KEY VALUE pairs")
    p.set_defaults(func=run_maskclip_plus)


# ---------------------------------------------------------------------- zegclip
subcommand("zegclip")(add_zegclip_parser)  # tools/benchmark_zegclip.py


# ---------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS.values():
        add(subparsers)
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res = args.func(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
