#!/usr/bin/env python
"""Speed benchmarks of training, the CLIP teacher and pseudo-labelling; JSON results.

Examples:
    python tools/benchmark.py train --config-file configs/toy/lseg_toyrn_400_bs8.yaml
    python tools/benchmark.py train --data synthetic --batch 16 --size 512 --precision bf16 \\
        --config-file configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml
    python tools/benchmark.py train --data synthetic --freeze prompt --precision bf16 \\
        --config-file configs/coco/freeseg/freeseg_r101c_alltask_60k_bs32.yaml
    python tools/benchmark.py teacher --model ViT-B-16 --size 512 512 --batch 2 --store
    python tools/benchmark.py pseudo --config-file configs/toy/maskclip.yaml --limit 50
    python tools/benchmark.py roofline --device-name "NVIDIA H200" \\
        --config-file configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml
    python tools/benchmark.py roofline --infer --batch 16 --precision bf16 \\
        --config-file configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml

``train`` times training iterations of any config (model, optimizer and data loader built as
ovseg's Trainer builds them): iterations/s, images/s, peak memory, the data-loading share,
measured FLOPs and MFU. ``teacher`` times the CLIP teacher's dense embeddings against a plain
forward and MaskCLIP labelling. ``pseudo`` times pseudo-labelling a config's dataset into a
store. ``roofline`` counts a config's training step (or, with ``--infer``, its test forward)
on fake tensors on the CPU (nothing computed) and gives its floor on a named GPU: every FLOP
at peak, every byte at the memory's bandwidth, every operator its own kernel, by source line.
Each prints its results as JSON on stdout (a readable summary goes to stderr) and writes them
to ``--output`` when given.
CLIP weights are random unless ``--pretrained``: speed does not depend on them. The
measurements live in ``ovseg.benchmark``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ovseg.benchmark import (
    CLOCKS,
    DATA_SOURCES,
    PRECISIONS,
    benchmark_config,
    benchmark_pseudo_labelling,
    benchmark_teacher,
    benchmark_training,
    default_device,
    training_config,
)
from ovseg.benchmark.roofline_runs import benchmark_roofline
from ovseg.utils.cli import (
    parse_trailing_opts,
    positive_float,
    positive_int,
    run_reporting_errors,
)
from ovseg.utils.io import atomic_write_json, check_output_file


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _si(value: float, unit: str = "FLOP") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _table(title: str, rows: Sequence[Tuple[str, str]]) -> None:
    """A readable summary on stderr (stdout holds the JSON)."""
    width = max(len(k) for k, _ in rows)
    print(title, file=sys.stderr)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", file=sys.stderr)


# ---------------------------------------------------------------------- train
def run_train(args: argparse.Namespace) -> Dict[str, Any]:
    cfg = training_config(
        args.config_file,
        args.opts,
        device=args.device,
        batch=args.batch,
        size=args.size,
        precision=args.precision,
        pretrained=args.pretrained,
        cache_dir=args.cache_dir,
    )
    res = benchmark_training(
        cfg, iters=args.iters, warmup=args.warmup, data=args.data, peak_tflops=args.peak_tflops,
        frozen=args.freeze,
    )  # fmt: skip
    return {"config": args.config_file, "opts": list(args.opts), **res}


def print_train(r: Dict[str, Any]) -> None:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    peak = f"{r['peak_tflops']:.1f} ({r['peak_tflops_source']})" if r["peak_tflops"] else "n/a"
    h, w = r["input_shape"]
    _table(
        f"{r['meta_architecture']} training ({r['config']}) on {r['device']} "
        f"({r['device_name']}), {r['precision']}, batch {r['batch']} x {h}x{w} ({r['data']} "
        f"data), {r['iters']} timed iterations after {r['warmup']}, torch {r['torch']}, "
        f"{r['threads']} CPU threads",
        [
            ("iterations/s", f"{r['it_per_s']:.3f}"),
            ("images/s", f"{r['images_per_s']:.2f}"),
            ("s/iteration", f"{r['s_per_iter']:.4f} (median {r['s_per_iter_median']:.4f})"),
            ("waiting for data", f"{100 * r['data_share']:.1f}% of the step"),
            ("peak memory", f"{r['peak_memory_gib']:.2f} GiB ({r['peak_memory_kind']})"),
            (
                "FLOPs/iteration",
                f"{_si(r['flops_per_iter'])} (forward {_si(r['flops_forward'])} + backward "
                f"{_si(r['flops_backward'])}; FlopCounterMode, measured)",
            ),
            ("achieved FLOP/s", _si(r["tflops_achieved"] * 1e12, "FLOP/s")),
            ("peak TFLOP/s", peak),
            ("MFU", mfu),
            ("parameters", f"{r['learnable_params']:,} learnable of {r['total_params']:,}"),
            ("optimizer", f"{r['optimizer']}, {r['vocabulary_size']} training classes"),
            ("loss first -> last", f"{r['loss_first']:.4f} -> {r['loss_last']:.4f}"),
        ],
    )


def add_train_parser(subparsers, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "train",
        parents=[parent],
        help="training throughput of any config: it/s, images/s, memory, data share, MFU",
        description=(
            "Times full training iterations (forward, losses, backward, optimizer step: "
            "train_net's model, optimizer and step for the config) on the config's training "
            "loader, or on one synthetic batch of random images and label maps of a few shapes "
            "over the training vocabulary, with the mapper's mask targets (--data synthetic: "
            "the dataset need not be on disk), and "
            "counts one iteration's FLOPs with FlopCounterMode (forward and backward measured, "
            "not a 3x rule). No checkpoint is loaded and no hook runs: speed only."
        ),
    )
    _add_step_arguments(p)
    p.add_argument(
        "--data",
        default="loader",
        choices=DATA_SOURCES,
        help="the config's training loader, or one synthetic batch repeated",
    )
    p.add_argument("--iters", type=positive_int, default=20, help="timed iterations")
    p.add_argument("--warmup", type=_non_negative, default=3, help="untimed iterations first")
    p.add_argument(
        "--peak-tflops",
        type=positive_float,
        default=None,
        help="device peak TFLOP/s for MFU (default: by CUDA device name; none on the CPU)",
    )
    _add_freeze_argument(p)
    _add_config_arguments(p, cache="temporary with random weights")
    p.set_defaults(func=run_train, show=print_train)


# ---------------------------------------------------------------------- teacher
def run_teacher(args: argparse.Namespace) -> Dict[str, Any]:
    return benchmark_teacher(
        model=args.model,
        pretrained=args.pretrained,
        cache_dir=args.cache_dir,
        size=tuple(args.size),
        batch=args.batch,
        device=args.device,
        precision=args.precision,
        iters=args.iters,
        warmup=args.warmup,
        clock=args.clock,
        vocabulary=args.vocabulary,
        templates=args.templates,
        store=args.store,
    )


def print_teacher(r: Dict[str, Any]) -> None:
    b, (h, w), (gh, gw) = r["batch"], r["size"], r["grid"]
    mh, mw = r["model_image_size"]
    rows = [
        ("dense_embeddings", f"{1000 * r['dense_s']:.2f} ms"),
        ("dense_embeddings(return_keys=True)", f"{1000 * r['dense_keys_s']:.2f} ms"),
        ("tower forward on the same tokens", f"{1000 * r['plain_forward_same_tokens_s']:.2f} ms"),
        (f"encode_image (resized to {mh}x{mw})", f"{1000 * r['encode_image_s']:.2f} ms"),
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
        rows.append(
            ("pseudo-label store", f"{rate:.2f} images/s (read JPEG, map, label, write 2 PNGs)")
        )
    _table(
        f"teacher {r['model']} ({r['pretrained'] or 'random init'}) on {r['device']}, "
        f"{r['precision']}, batch {b} x {h}x{w} (grid {gh}x{gw}); median {r['clock']} time, "
        f"{r['threads']} CPU threads",
        rows,
    )


def add_teacher_parser(subparsers, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "teacher",
        parents=[parent],
        help="CLIP teacher: dense_embeddings vs a plain forward, pseudo-labelling images/s",
        description=(
            "Times, on one random batch: dense_embeddings (MaskCLIP's last-block rule) with "
            "and without keys; the vision tower's own forward on the same padded input and "
            "so the same tokens (positional embeddings interpolated as dense_embeddings "
            "does; full attention in every block, pooled output); encode_image (input "
            "resized to the model size); MaskCLIP labelling (prompt denoising + key "
            "smoothing forward at the input size, argmax per image); and with --store the "
            "ovseg.pseudo generation loop writing a store. Medians after warm-up calls."
        ),
    )
    p.add_argument(
        "--model",
        default="configs/clip/tiny_vit.json",
        help="open_clip model name or JSON model config",
    )
    p.add_argument("--pretrained", default="", help="tag, checkpoint path, or '' (random)")
    p.add_argument("--cache-dir", default="", help="MODEL.CLIP.CACHE_DIR ('' = default)")
    p.add_argument("--size", type=positive_int, nargs=2, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--batch", type=positive_int, default=2)
    p.add_argument("--device", default=default_device())
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--iters", type=positive_int, default=10)
    p.add_argument("--warmup", type=_non_negative, default=3)
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
    p.set_defaults(func=run_teacher, show=print_teacher)


# ---------------------------------------------------------------------- pseudo
def run_pseudo(args: argparse.Namespace) -> Dict[str, Any]:
    cfg = benchmark_config(
        args.config_file,
        args.opts,
        device=args.device,
        pretrained=args.pretrained,
        cache_dir=args.cache_dir,
    )
    res = benchmark_pseudo_labelling(
        cfg,
        dataset=args.dataset,
        limit=args.limit,
        warmup=args.warmup,
        threshold=args.threshold,
        scores=args.scores,
    )
    return {"config": args.config_file, "opts": list(args.opts), **res}


def print_pseudo(r: Dict[str, Any]) -> None:
    _table(
        f"pseudo-labelling {r['dataset']} with {r['meta_architecture']} ({r['config']}) on "
        f"{r['device']}, {r['threads']} CPU threads",
        [
            ("images/s", f"{r['images_per_s']:.2f} (read, map, label, write 2 PNGs)"),
            ("s/image", f"{r['s_per_image']:.4f}"),
            ("images", f"{r['images']} after {r['warmup']} warm-up"),
            ("classes", f"{r['vocabulary_size']} ({r['score_kind']})"),
        ],
    )


def add_pseudo_parser(subparsers, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "pseudo",
        parents=[parent],
        help="pseudo-labelling throughput of a config's teacher over its dataset",
        description=(
            "Labels a registered dataset with a config's teacher into a temporary store, as "
            "tools/generate_pseudo_labels.py does in one process (read, map, label, write "
            "label and confidence PNGs), after labelling --warmup images into another."
        ),
    )
    p.add_argument("--config-file", required=True, help="the teacher's config")
    p.add_argument("--dataset", default="", help="registered dataset (default DATASETS.TRAIN[0])")
    p.add_argument("--limit", type=_non_negative, default=0, help="first N images (0 = all)")
    p.add_argument("--warmup", type=_non_negative, default=1, help="images labelled first")
    p.add_argument("--threshold", type=float, default=0.0, help="the store's threshold")
    p.add_argument(
        "--scores",
        default="auto",
        choices=("auto", "logits", "probabilities"),
        help="what the model's sem_seg scores are (auto: its sem_seg_scores)",
    )
    _add_config_arguments(p, cache="default")
    p.set_defaults(func=run_pseudo, show=print_pseudo)


# ---------------------------------------------------------------------- infer
def run_infer(args: argparse.Namespace) -> Dict[str, Any]:
    from ovseg.benchmark.infer import benchmark_inference

    cfg = benchmark_config(
        args.config_file, args.opts, device=args.device, pretrained=args.pretrained,
        cache_dir=args.cache_dir,
    )  # fmt: skip
    res = benchmark_inference(
        cfg, modes=args.modes, batch=args.batch, size=args.size, precision=args.precision,
        iters=args.iters, warmup=args.warmup, frozen=args.freeze,
    )  # fmt: skip
    return {"config": args.config_file, "opts": list(args.opts), **res}


def print_infer(r: Dict[str, Any]) -> None:
    rows = []
    for mode in ("whole", "slide"):
        if mode in r:
            m = r[mode]
            rows.append((f"{mode} images/s", f"{m['images_per_s']:.2f}"))
            rows.append((f"{mode} latency", f"{1000 * m['latency_s']:.2f} ms"))
            rows.append((f"{mode} FLOPs/image", _si(m["flops_per_image"])))
    h, w = r["size"]
    _table(
        f"{r['meta_architecture']} inference ({r['config']}) on {r['device']}, "
        f"{r['precision']}, batch {r['batch']} x {h}x{w}",
        rows,
    )


def add_infer_parser(subparsers, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "infer",
        parents=[parent],
        help="inference images/s and latency of any config, whole and slide",
        description="Times the config's eval forward on synthetic images of its test size.",
    )
    p.add_argument("--config-file", required=True, help="any ovseg config")
    p.add_argument("--modes", nargs="+", default=["whole", "slide"], choices=("whole", "slide"))
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--size", type=positive_int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--iters", type=positive_int, default=10)
    p.add_argument("--warmup", type=_non_negative, default=3)
    _add_freeze_argument(p)
    _add_config_arguments(p, cache="temporary with random weights")
    p.set_defaults(func=run_infer, show=print_infer)


# ---------------------------------------------------------------------- entry point
def _add_freeze_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--freeze", nargs="+", default=[], metavar="MODULE",
        help="submodules frozen after the build, as a stage's checkpoint freezes them (FreeSeg "
        "'prompt': the prompt stage's tokens, the paper recipe)",
    )  # fmt: skip


def _add_config_arguments(p: argparse.ArgumentParser, cache: str) -> None:
    p.add_argument("--device", default=default_device(), help="cpu or cuda[:N] (MODEL.DEVICE)")
    p.add_argument("--pretrained", default="", help="MODEL.CLIP.PRETRAINED ('' = random)")
    p.add_argument("--cache-dir", default="", help=f"MODEL.CLIP.CACHE_DIR ('' = {cache})")
    _add_opts_argument(p)


def _add_opts_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config KEY VALUE pairs (or after --opts)",
    )


def _add_step_arguments(p: argparse.ArgumentParser) -> None:
    """A training step of a config: the config, its batch, crop and precision."""
    p.add_argument("--config-file", required=True, help="any ovseg training config")
    p.add_argument("--batch", type=positive_int, default=None, help="images per iteration")
    p.add_argument(
        "--size", type=positive_int, default=None, help="square training crop side (INPUT.CROP)"
    )
    p.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="fp32, or AMP autocast in bf16/fp16 (default: the config's SOLVER.AMP)",
    )


# ---------------------------------------------------------------------- roofline
def run_roofline(args: argparse.Namespace) -> Dict[str, Any]:
    if args.infer and args.size:
        raise ValueError("--size is the training crop; with --infer give --image-size H W")
    if args.image_size and not args.infer:
        raise ValueError("--image-size is the test image's; without --infer give --size")
    cfg = training_config(
        args.config_file, args.opts, device="cpu", batch=None if args.infer else args.batch,
        size=args.size, precision=args.precision, pretrained="", cache_dir=args.cache_dir,
    )  # fmt: skip
    res = benchmark_roofline(
        cfg, device_name=args.device_name, peak_tflops=args.peak_tflops,
        bandwidth_tbps=args.bandwidth_tbps, frozen=args.freeze, top=args.top, infer=args.infer,
        images=args.batch or 1, image_size=args.image_size,
    )  # fmt: skip
    return {"config": args.config_file, "opts": list(args.opts), **res}


def print_roofline(r: Dict[str, Any]) -> None:
    mfu = r["mfu_ceiling_unfused"]
    step = r["counted"] == "step"
    what = "training step" if step else f"{r['counted']} test forward"
    size = r["side"] if step else "x".join(str(v) for v in r["side"])
    images = [] if step else [("images/s at the unfused floor",
                               f"{1e3 * r['batch'] / r['unfused_floor_ms']:.1f}")]  # fmt: skip
    _table(
        f"{r['meta_architecture']} {what} ({r['config']}), {r['precision']}, batch "
        f"{r['batch']} x {size}, counted on fake tensors for {r['device_name']} "
        f"({r['peak_tflops']:.1f} TFLOP/s, {r['bandwidth_tbps']:.2f} TB/s), torch {r['torch']}",
        images + [
            ("FLOPs (forward + backward)" if step else "FLOPs", _si(r["flops"])),
            ("bytes read and written", _si(r["bytes"], "B") + f" in {r['calls']} operator calls"),
            ("FLOP floor (100% MFU)", f"{r['flop_floor_ms']:.2f} ms"),
            ("byte floor", f"{r['byte_floor_ms']:.2f} ms"),
            ("unfused floor", f"{r['unfused_floor_ms']:.2f} ms (every operator a kernel)"),
            ("MFU at the unfused floor", f"{100 * mfu:.1f}%" if mfu else "n/a"),
        ]
        + [
            (f"  {name}", f"{c['floor_ms']:.2f} ms, {c['gflop']:.1f} GFLOP, "
             f"{c['gbytes']:.2f} GB, {c['calls']} calls")
            for name, c in sorted(r["by_class"].items(), key=lambda kv: -kv[1]["floor_ms"])
        ]
        + [
            (f"{s['op']} @ {s['site']}", f"{s['floor_ms']:.3f} ms ({s['bound']}), "
             f"{s['gflop']:.1f} GFLOP, {s['gbytes']:.2f} GB, {s['calls']} calls")
            for s in r["sites"]
        ],
    )  # fmt: skip


def add_roofline_parser(subparsers, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "roofline",
        parents=[parent],
        help="a config's training step or test forward counted on the CPU: its floor on a GPU",
        description=(
            "Runs one training forward and backward of the config (after a warm-up one), or "
            "with --infer one test forward (TEST.INFERENCE_MODE, whole or slide, at the test "
            "size), on fake tensors on the CPU: every operator's FLOPs and bytes at the "
            "config's batch and size, nothing computed, no GPU. Prints the floor on the named "
            "device (every FLOP at peak, every byte at the memory's bandwidth, every operator "
            "its own kernel) and the source lines that cost most (ovseg.benchmark.roofline)."
        ),
    )
    _add_step_arguments(p)
    p.add_argument(
        "--infer", action="store_true",
        help="count the test forward (--batch: images per forward, default 1; the mode: "
        "TEST.INFERENCE_MODE, e.g. TEST.INFERENCE_MODE whole after the options)",
    )  # fmt: skip
    p.add_argument(
        "--image-size", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
        help="with --infer: the test image (default the test short side at 4:3)",
    )  # fmt: skip
    p.add_argument("--device-name", default="NVIDIA H200", help="the GPU whose roofline to use")
    p.add_argument("--peak-tflops", type=positive_float, default=None, help="override the table")
    p.add_argument(
        "--bandwidth-tbps", type=positive_float, default=None, help="override the table (TB/s)"
    )
    p.add_argument("--top", type=positive_int, default=30, help="source lines listed")
    _add_freeze_argument(p)
    p.add_argument("--cache-dir", default="", help="MODEL.CLIP.CACHE_DIR ('' = temporary)")
    _add_opts_argument(p)
    p.set_defaults(func=run_roofline, show=print_roofline)


SUBCOMMANDS: Tuple[Callable[[Any, argparse.ArgumentParser], None], ...] = (
    add_train_parser,
    add_teacher_parser,
    add_pseudo_parser,
    add_infer_parser,
    add_roofline_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--output", default="", help="also write the JSON results to this file")
    parent.add_argument(
        "--threads", type=_non_negative, default=0, help="torch CPU threads (0 = default)"
    )
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers, parent)
    return parser


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_trailing_opts(build_parser(), argv)
    check_output_file(args.output, ".json")  # before the work, not after it
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res = args.func(args)
    args.show(res)
    print(json.dumps(res, indent=2))
    if args.output:
        atomic_write_json(args.output, res)
    return res


if __name__ == "__main__":
    sys.exit(run_reporting_errors("benchmark.py", main))
