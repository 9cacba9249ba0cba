"""ZegCLIP training throughput for ``tools/benchmark.py zegclip`` (registered there).

Builds the model, optimizer and training step of a ZegCLIP config as ``train_net.py`` does
(``load_config``, ``build_model``, ``ovseg.engine.solver.build_optimizer``, detectron2's
``SimpleTrainer`` or ovseg's ``AMPTrainer`` by SOLVER.AMP), feeds one synthetic batch over
and over, and reports iterations/s, images/s, peak memory, parameter counts, the FLOPs of one
training iteration and the model-FLOPs utilisation (MFU).

FLOPs convention: ``torch.utils.flop_counter.FlopCounterMode`` counts the matmul,
convolution and attention FLOPs (2 per multiply-add) of one real forward, and of one real
training step (forward, backward, optimizer step); the backward is their difference. It is
measured, not a "3x forward" rule: only prompts and decoder learn, so the frozen CLIP tower's
backward computes activation gradients only (no weight gradients) and costs about 1x its
forward, not 2x. Element-wise work, norms, softmax, interpolation and the optimizer update
are not counted, so MFU slightly understates the work done. MFU = FLOPs per iteration x
iterations/s / peak FLOP/s of the device at the precision (``--peak-tflops``, else a table
of dense peaks by device name; "n/a" when unknown, e.g. on the CPU).

Random CLIP weights by default (``MODEL.CLIP.PRETRAINED ""``: the architecture only, no
download); the training dataset need not exist on disk, only its registered metadata (the
training vocabulary comes from the training mapper, as in training).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import resource
import statistics
import sys
import tempfile
import time
from typing import List, Optional, Tuple

import numpy as np
import torch
from benchmark_utils import default_device, synchronize
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ZEGCLIP_CONFIG", "add_zegclip_parser", "run_zegclip", "peak_tflops_for"]

ZEGCLIP_CONFIG = "configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml"
PRECISIONS = ("fp32", "bf16", "fp16")

# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets, (name fragment, bf16/fp16,
# tf32, fp32 without tensor cores); the first fragment found in the device name wins.
PEAK_TFLOPS: Tuple[Tuple[str, float, float, float], ...] = (
    ("H100 PCIe", 756.5, 378.0, 51.0),
    ("NVL", 835.5, 417.5, 60.0),  # H100 NVL, H200 NVL
    ("H200", 989.5, 494.7, 67.0),  # SXM
    ("H100", 989.5, 494.7, 67.0),  # SXM
    ("A100", 312.0, 156.0, 19.5),
)


def peak_tflops_for(device_name: str, precision: str) -> Optional[float]:
    """Dense peak TFLOP/s of a CUDA device at a precision, or None for an unknown device.

    fp32 counts TF32 tensor cores when ``torch.get_float32_matmul_precision()`` allows them.
    """
    for fragment, half, tf32, fp32 in PEAK_TFLOPS:
        if fragment in device_name:
            if precision in ("bf16", "fp16"):
                return half
            return tf32 if torch.get_float32_matmul_precision() != "highest" else fp32
    return None


# ---------------------------------------------------------------------- FLOP counting
def _shape(x) -> Tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else tuple(x)


def _attention_flops(query, key, value) -> int:
    """2 * (Q K^T + P V) multiply-adds for (B, H, L, E) queries and (B, H, S, E) keys."""
    *batch, length, e = _shape(query)
    s, ev = _shape(key)[-2], _shape(value)[-1]
    return 2 * int(np.prod(batch)) * length * s * (e + ev)


def _cpu_attention_flops(query, key, value, *args, **kwargs) -> int:
    return _attention_flops(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    return 2 * _attention_flops(query, key, value)  # dQ, dK, dV and dP: twice the forward


def _flop_counter() -> FlopCounterMode:
    """A counter that also knows the CPU's fused attention, which torch does not count."""
    mapping = {}
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_attention_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_attention_backward_flops),
    ):
        try:
            mapping[getattr(torch.ops.aten, name)] = fn
        except (AttributeError, RuntimeError):  # a torch without this kernel
            pass
    return FlopCounterMode(display=False, custom_mapping=mapping)


# ---------------------------------------------------------------------- set-up
def _config(args, cache_dir: str):
    from ovseg.engine.defaults import load_config

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {args.device} but CUDA is unavailable (torch {torch.__version__}); "
            "use --device cpu"
        )
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise ValueError(f"--device {args.device!r} is neither 'cpu' nor 'cuda[:N]'")
    if len(args.opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    s = args.size
    opts = [
        "MODEL.DEVICE", args.device,
        "MODEL.CLIP.PRETRAINED", args.pretrained,
        "MODEL.CLIP.CACHE_DIR", cache_dir,
        "MODEL.WEIGHTS", "",
        "SOLVER.IMS_PER_BATCH", str(args.batch),
        "INPUT.CROP.SIZE", f"({s}, {s})",
        "INPUT.SIZE_DIVISIBILITY", str(s),  # training pads to the crop: here a no-op
    ]  # fmt: skip
    if args.precision is not None:
        opts += ["SOLVER.AMP.ENABLED", str(args.precision != "fp32")]
        if args.precision != "fp32":
            opts += ["SOLVER.AMP.DTYPE", args.precision]
    cfg = load_config(args.config_file, opts + list(args.opts))
    if cfg.MODEL.META_ARCHITECTURE != "ZegCLIP":
        raise ValueError(
            f"{args.config_file} builds MODEL.META_ARCHITECTURE "
            f"{cfg.MODEL.META_ARCHITECTURE!r}, not 'ZegCLIP'"
        )
    if not cfg.DATASETS.TRAIN:
        raise ValueError(
            f"{args.config_file} has no DATASETS.TRAIN: the training vocabulary comes from the "
            "training dataset's registered metadata"
        )
    return cfg


def _training_vocabulary(cfg) -> Tuple[List[str], List[int]]:
    """The names training labels index, and the label ids ground truth can hold (the
    zero-shot remap turns unseen classes into ignore), from the config's training mapper."""
    from ovseg.data import build_dataset_mapper

    mapper = build_dataset_mapper(cfg, True, cfg.DATASETS.TRAIN[0])
    names = list(mapper.vocabulary)
    if mapper.label_map is None:
        return names, list(range(len(names)))
    ids = sorted({int(v) for v in mapper.label_map if int(v) < len(names)})
    return names, ids


def synthetic_batch(
    batch: int, size: int, vocabulary: List[str], label_ids: List[int], ignore: int, seed: int = 0
) -> List[dict]:
    """Training inputs: random images and label maps of a few rectangles of seen classes.

    Returns:
        list[dict]: "image" (3, size, size) uint8, "sem_seg" (size, size) long indexing
        "vocabulary" (one background class, three rectangles, an ignored one).
    """
    g = torch.Generator().manual_seed(seed)

    def pick(n: int) -> torch.Tensor:
        return torch.randint(0, n, (), generator=g)

    inputs = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        label = torch.full((size, size), label_ids[int(pick(len(label_ids)))], dtype=torch.long)
        for k in range(4):
            y0, x0 = int(pick(size // 2)), int(pick(size // 2))
            y1, x1 = y0 + 1 + int(pick(size // 2)), x0 + 1 + int(pick(size // 2))
            label[y0:y1, x0:x1] = label_ids[int(pick(len(label_ids)))] if k < 3 else ignore
        inputs.append({"image": image, "sem_seg": label, "vocabulary": list(vocabulary)})
    return inputs


def _trainer(cfg, model, batch):
    """train_net's training step for this config: AMP by SOLVER.AMP, else detectron2's."""
    from detectron2.engine import SimpleTrainer

    from ovseg.engine.solver import build_optimizer
    from ovseg.engine.train_loop import AMPTrainer

    optimizer = build_optimizer(cfg, model)
    data = itertools.repeat(batch)
    if cfg.SOLVER.AMP.ENABLED:
        return AMPTrainer(model, data, optimizer, dtype=cfg.SOLVER.AMP.DTYPE)
    return SimpleTrainer(model, data, optimizer)


def _autocast(trainer):
    if hasattr(trainer, "dtype"):  # AMPTrainer
        return torch.autocast(trainer.device_type, dtype=trainer.dtype)
    return contextlib.nullcontext()


def _peak_memory(device: torch.device) -> Tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return rss / 2**30, "process peak RSS (ru_maxrss, whole run)"


# ---------------------------------------------------------------------- benchmark
def run_zegclip(args) -> dict:
    """Time ``args.iters`` ZegCLIP training iterations after ``args.warmup`` untimed ones.

    Returns:
        dict: the results (see the module docstring for the FLOPs convention).
    """
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    with tempfile.TemporaryDirectory() as tmp:
        # random weights are worth no cache: text embeddings go to a throw-away folder
        cfg = _config(args, args.cache_dir or (tmp if not args.pretrained else ""))
        device = torch.device(cfg.MODEL.DEVICE)
        precision = cfg.SOLVER.AMP.DTYPE if cfg.SOLVER.AMP.ENABLED else "fp32"
        torch.manual_seed(0)
        model = build_model(cfg)
        patch = model.backbone.size_divisibility
        if args.size % patch:
            raise ValueError(
                f"--size {args.size} is not a multiple of the patch size {patch} of "
                f"{cfg.MODEL.CLIP.MODEL_NAME}; try {max(patch, args.size // patch * patch)}"
            )
        names, label_ids = _training_vocabulary(cfg)
        batch = synthetic_batch(args.batch, args.size, names, label_ids, model.ignore_value)
        trainer = _trainer(cfg, model, batch)
        learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())

        times: List[float] = []
        with EventStorage(0) as storage:
            for i in range(args.warmup + args.iters):
                if i == args.warmup and device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                storage.iter = i
                synchronize(device)
                start = time.perf_counter()
                trainer.run_step()
                synchronize(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - start)
            peak_memory, peak_memory_kind = _peak_memory(device)
            losses = [v for v, _ in storage.history("total_loss").values()]
            # counted after the timing (the teacher memoises the text embeddings by then)
            with _flop_counter() as counter, _autocast(trainer):
                trainer.model(batch)
            forward = counter.get_total_flops()
            storage.iter = args.warmup + args.iters
            with _flop_counter() as counter:
                trainer.run_step()
            step = counter.get_total_flops()

    s_per_iter = sum(times) / len(times)
    it_per_s = 1.0 / s_per_iter
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if args.peak_tflops is not None:
        peak, peak_source = args.peak_tflops, "--peak-tflops"
    elif device.type == "cuda":
        peak, peak_source = peak_tflops_for(device_name, precision), "table by device name"
    else:
        peak, peak_source = None, None
    achieved = step * it_per_s / 1e12
    res = {
        "config": args.config_file,
        "opts": list(args.opts),
        "device": str(device),
        "device_name": device_name,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": args.batch,
        "size": args.size,
        "iters": args.iters,
        "warmup": args.warmup,
        "it_per_s": it_per_s,
        "images_per_s": args.batch * it_per_s,
        "s_per_iter": s_per_iter,
        "s_per_iter_median": statistics.median(times),
        "peak_memory_gib": peak_memory,
        "peak_memory_kind": peak_memory_kind,
        "flops_forward": forward,
        "flops_backward": step - forward,
        "flops_per_iter": step,
        "flops_convention": (
            "FlopCounterMode (matmul/conv/attention, 2 per multiply-add) around one real "
            "forward and one real training step; backward = step - forward; element-wise "
            "ops and the optimizer update not counted"
        ),
        "tflops_achieved": achieved,
        "peak_tflops": peak,
        "peak_tflops_source": peak_source,
        "mfu": achieved / peak if peak else None,
        "learnable_params": learnable,
        "total_params": total,
        "optimizer": type(trainer.optimizer).__name__,
        "vocabulary_size": len(names),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    _print_zegclip(res)
    return res


def _si(value: float, unit: str = "FLOP") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _print_zegclip(r: dict) -> None:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    peak = f"{r['peak_tflops']:.1f} ({r['peak_tflops_source']})" if r["peak_tflops"] else "n/a"
    print(
        f"ZegCLIP training ({r['config']}) on {r['device']} ({r['device_name']}), "
        f"{r['precision']}, batch {r['batch']} x {r['size']}x{r['size']}, {r['iters']} timed "
        f"iterations after {r['warmup']}, torch {r['torch']}, {r['threads']} CPU threads"
    )
    rows = [
        ("iterations/s", f"{r['it_per_s']:.3f}"),
        ("images/s", f"{r['images_per_s']:.2f}"),
        ("s/iteration", f"{r['s_per_iter']:.4f} (median {r['s_per_iter_median']:.4f})"),
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
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_zegclip_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "zegclip",
        help="ZegCLIP training throughput: it/s, images/s, memory, FLOPs and MFU",
        description=(
            "Times full ZegCLIP training iterations (forward, losses, backward, optimizer "
            "step: train_net's step and optimizer for the config) on one synthetic batch of "
            "random images and rectangle label maps over the training vocabulary, and counts "
            "one iteration's FLOPs with FlopCounterMode (forward and backward measured, not a "
            "3x rule). Random CLIP weights unless --pretrained: speed only."
        ),
    )
    p.add_argument("--config-file", default=ZEGCLIP_CONFIG, help="a ZegCLIP config")
    p.add_argument("--pretrained", default="", help="MODEL.CLIP.PRETRAINED ('' = random)")
    p.add_argument(
        "--cache-dir", default="", help="MODEL.CLIP.CACHE_DIR ('' = temporary with random weights)"
    )
    p.add_argument("--batch", type=_positive, default=16, help="images per iteration")
    p.add_argument("--size", type=_positive, default=512, help="square image (crop) side")
    p.add_argument("--iters", type=_positive, default=50, help="timed iterations")
    p.add_argument("--warmup", type=_non_negative, default=5, help="untimed iterations first")
    p.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="fp32, or AMP autocast in bf16/fp16 (default: the config's SOLVER.AMP)",
    )
    p.add_argument(
        "--device",
        default=default_device(),
        help="cpu or cuda[:N] (MODEL.DEVICE)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="device peak TFLOP/s for MFU (default: by CUDA device name; none on the CPU)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config KEY VALUE pairs")
    p.set_defaults(func=run_zegclip)
