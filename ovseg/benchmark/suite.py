"""Every student's training step and inference, measured side by side in one run.

``python -m ovseg.benchmark.suite --device cuda --output-dir DIR`` (what
``tools/gpu_check.sh`` runs) measures the paper configs on synthetic data with random CLIP
weights of the real architectures; ``--smoke`` runs the same code on the toy configs, tiny,
on the CPU. Each item runs in its own try block under a time budget, so one failure costs
one row. Writes ``suite.json`` (every figure), ``table.md`` (the table) and, unless
``--no-profile``, ``profile.txt`` / ``profile.json`` (the ZegCLIP step under torch.profiler,
after every student's first row; on CUDA the goal row's step compiled without CUDA graphs:
top kernels by device time, device and wall time per step, host syncs per step).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..utils.io import atomic_write_json, atomic_write_text
from .config import benchmark_config
from .infer import benchmark_inference
from .suite_items import GPU_ITEMS, TOY_ITEMS, TOY_SLIDE, _compiles, _run_order
from .train import benchmark_training, training_config

__all__ = ["GPU_ITEMS", "TOY_ITEMS", "main", "run_suite", "write_table"]

# what the CUDA profile profiles: the goal row's GPU work (the step compiled, the frozen tower
# in bf16) without its CUDA graphs, whose replays the profiler attributes to no operator; the
# eager step's profile is the 2026-12-04 run's. On the CPU the step stays eager: a CPU
# profile is no breakdown of GPU work, and compiling a step there takes minutes.
_PROFILE_CUDA_OPTS = ("MODEL.COMPILE", "True", "MODEL.CLIP.FROZEN_DTYPE", "bfloat16")


def _profile_opts(device: str) -> tuple:
    return _PROFILE_CUDA_OPTS if device.startswith("cuda") else ()


# rows that vary a training switch: their inference is the base row's (not timed again)
_TRAIN_ONLY = ("compiled", "store", "channels", "frozen", "attention", "loss")


class _Budget(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise :class:`_Budget` in the main thread after ``seconds`` (SIGALRM; no-op elsewhere)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(*_):
        raise _Budget(f"over its {seconds:.0f} s budget")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _log(msg: str) -> None:
    print(f"[suite {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _guarded(label: str, budget: float, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    start = time.perf_counter()
    try:
        with _time_limit(budget):
            out = fn()
    except (Exception, _Budget) as e:  # one row lost, not the table
        _log(f"{label}: FAILED {type(e).__name__}: {e}")
        out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out["wall_s"] = time.perf_counter() - start
    return out


def _train_row(config: str, opts, frozen, a: argparse.Namespace) -> Dict[str, Any]:
    cfg = training_config(
        config, list(a.opts) + list(opts), device=a.device, precision=a.precision,
        batch=a.batch, size=a.size,
    )  # fmt: skip
    return benchmark_training(
        cfg, iters=a.iters, warmup=a.warmup, data="synthetic", peak_tflops=a.peak_tflops,
        shares_steps=a.shares_steps, frozen=frozen,
    )  # fmt: skip


def _mapper_row(config: str, opts: Sequence[str], a: argparse.Namespace) -> Dict[str, Any]:
    """The config's training mapper on synthetic files; its share of the timed step."""
    from .shares import mapper_rate

    opts = list(a.opts) + list(opts)
    cfg = training_config(config, opts, device="cpu", batch=a.batch, size=a.size)
    size = (a.size, a.size) if a.size else (375, 500)  # a typical VOC image
    return mapper_rate(cfg, images=2 if a.smoke else 8, size=size, repeats=1 if a.smoke else 2)


def _infer_row(
    config: str, opts, frozen, a: argparse.Namespace, batch: int = 1, budget: float = 0.0
):
    cfg = benchmark_config(config, list(a.opts) + list(opts), device=a.device)
    size = (a.size, a.size) if a.size else None
    # each mode's timed calls stop at a quarter of the row's budget (at least 3 calls): a
    # slow protocol (LSeg ViT-L's multi-scale slide) gets fewer calls, not a lost row
    return benchmark_inference(
        cfg, precision=a.precision, iters=a.iters, warmup=a.warmup, size=size, frozen=frozen,
        batch=batch, time_limit_s=budget / 4 if budget else None,
    )  # fmt: skip


def _profile(config: str, a: argparse.Namespace, out_dir: Path) -> Dict[str, Any]:
    """The config's training step under torch.profiler: top kernels, host syncs."""
    from .profile import profile_training

    opts = list(a.opts) + list(_profile_opts(a.device))
    cfg = training_config(
        config, opts, device=a.device, precision=a.precision, batch=a.batch, size=a.size
    )
    return profile_training(cfg, out_dir, steps=max(2, a.iters // 5), warmup=a.warmup)


def _left(a: argparse.Namespace, want: float) -> float:
    """``want`` seconds, capped by what ``--deadline`` leaves (0: nothing left)."""
    if not a.deadline:
        return want
    return max(0.0, min(want, a.deadline_at - time.perf_counter() - 5))


def _run_row(item, a: argparse.Namespace, budget: float, mapper: bool):
    """One row of the table: the training step, its mapper (``mapper``: the first row of its
    config), the inference."""
    name, config, train, opts, *more = item
    frozen = more[0] if more else ()
    batch = more[1] if len(more) > 1 else 1
    row: Dict[str, Any] = {"config": config, "opts": list(opts), "frozen": list(frozen)}
    jobs = []
    if train:
        jobs.append(("train", budget, lambda s: _train_row(config, opts, frozen, a)))
        if mapper:
            jobs.append(("mapper", budget / 4, lambda s: _mapper_row(config, opts, a)))
    if not train or not any(w in name for w in _TRAIN_ONLY):  # an inference row: its budget
        want = budget / 2 if train else budget
        jobs.append(("infer", want, lambda s: _infer_row(config, opts, frozen, a, batch, s)))
    for part, want, fn in jobs:
        seconds = _left(a, want)
        if seconds <= 0:
            row[part] = {"error": f"skipped: the suite's --deadline of {a.deadline:.0f} s"}
            continue
        _log(f"{name}: {part}")
        row[part] = _guarded(name, seconds, functools.partial(fn, seconds))
    return row


def run_suite(a: argparse.Namespace) -> Dict[str, Any]:
    """Every item of the table (train and inference rows) and the profile, in
    :func:`_run_order` (the goal's rows, then one row per student); compiled rows take
    their own ``--compile-budget`` (compilation takes minutes). The table keeps the items'
    order."""
    a.deadline_at = time.perf_counter() + a.deadline
    items = TOY_ITEMS if a.smoke else GPU_ITEMS
    if a.only:
        items = tuple(i for i in items if any(k.lower() in i[0].lower() for k in a.only))
    out_dir = Path(a.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res: Dict[str, Any] = {"device": a.device, "precision": a.precision, "torch":
                           torch.__version__, "smoke": a.smoke, "rows": {}}  # fmt: skip
    if a.device.startswith("cuda"):
        res["device_name"] = torch.cuda.get_device_name(0)
        res["tf32"] = torch.backends.cuda.matmul.allow_tf32

    def save():  # after every row: a timeout loses no finished row
        res["rows"] = {i[0]: res["rows"][i[0]] for i in items if i[0] in res["rows"]}
        atomic_write_json(out_dir / "suite.json", res)
        atomic_write_text(out_dir / "table.md", write_table(res))

    first = {}  # config -> its first row in the items' order, which times the config's mapper
    for item in items:
        first.setdefault(item[1], item[0])
    zeg = next((c for n, c, *_ in items if "ZegCLIP" in n), None)
    profile = not a.no_profile and zeg is not None
    for item in _run_order(items):
        if item is None:  # every student's first row done, the variants to come
            if profile:
                _profile_into(res, zeg, a, out_dir)
                save()
            continue
        name, compiled = item[0], "compiled" in item[0]
        budget = a.compile_budget if _compiles(item) else a.budget
        res["rows"][name] = _run_row(item, a, budget, first[item[1]] == name and not compiled)
        if compiled:
            _forget_compiled()
        _log(f"{name}: {_summary(res['rows'][name])}")
        save()
    return res


def _profile_into(res: Dict[str, Any], config: str, a: argparse.Namespace, out_dir: Path):
    """The profile, on the compile budget (on CUDA it compiles the step, as the goal row)."""
    seconds = _left(a, a.compile_budget if _profile_opts(a.device) else a.budget)
    if seconds > 0:
        _log(f"profile {config} {' '.join(_profile_opts(a.device))}".rstrip())
        res["profile"] = _guarded("profile", seconds, lambda: _profile(config, a, out_dir))
        _forget_compiled()


def _forget_compiled() -> None:
    """The compiled graphs and their CUDA-graph pools go before the next row."""
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _summary(row: Dict[str, Any]) -> str:
    t, i = row.get("train", {}), row.get("infer", {})
    parts = []
    if "it_per_s" in t:
        parts.append(f"train {1000 / t['it_per_s']:.1f} ms/step {t['images_per_s']:.1f} img/s")
    if t.get("mfu") is not None:
        parts.append(f"MFU {100 * t['mfu']:.1f}%")
    if "whole" in i:
        parts.append(f"infer {i['whole']['images_per_s']:.1f} img/s")
    return ", ".join(parts) or "error"


def _fmt(value: Optional[float], scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def write_table(res: Dict[str, Any]) -> str:
    """The markdown table of a suite result."""
    head = (
        "| student | batch x size | train ms/step | train img/s | TFLOP/step | MFU % | peak GiB "
        "| frozen fwd % | optimizer % | host syncs/step | mapper ms/img | loader % of step "
        "| infer img/s whole | latency ms whole | infer img/s slide |\n|" + "---|" * 15 + "\n"
    )
    lines = [head]
    for name, row in res["rows"].items():
        t, i, m = row.get("train", {}), row.get("infer", {}), row.get("mapper", {})
        # the loader's time per batch per worker against the step: over 100 it starves it
        per_batch = m.get("mapper_s_per_batch_per_worker")
        loader = per_batch / t["s_per_iter"] if per_batch and "s_per_iter" in t else None
        whole, slide = i.get("whole", {}), i.get("slide", {})
        syncs = t.get("host_syncs_per_step", {})
        sync = syncs.get("cuda_sync_warnings", syncs.get("dispatch"))
        shape = f"{t['batch']} x {t['size']}" if "batch" in t else "-"
        if "batch" not in t and i.get("batch", 1) > 1:  # a batched inference row
            shape = f"{i['batch']} x {i['size'][0]}x{i['size'][1]} (infer)"
        lines.append(
            f"| {name} | {shape} | {_fmt(t.get('s_per_iter'), 1000)} | "
            f"{_fmt(t.get('images_per_s'))} | {_fmt(t.get('flops_per_iter'), 1e-12, 2)} | "
            f"{_fmt(t.get('mfu'), 100)} | {_fmt(t.get('peak_memory_gib'), 1, 2)} | "
            f"{_fmt(t.get('frozen_forward_share'), 100)} | {_fmt(t.get('optimizer_share'), 100)}"
            f" | {'-' if sync is None else sync} | {_fmt(m.get('mapper_s_per_image'), 1000)} | "
            f"{_fmt(loader, 100)} | {_fmt(whole.get('images_per_s'))} | "
            f"{_fmt(whole.get('latency_s'), 1000)} | {_fmt(slide.get('images_per_s'))} |\n"
        )
        for part in ("train", "mapper", "infer"):
            if "error" in row.get(part, {}):
                lines.append(f"|   {part} error: {row[part]['error'][:150]} |\n")
    lines.append(f"\n{res.get('device_name', res['device'])}, {res['precision']}, torch "
                 f"{res['torch']}; synthetic data, random CLIP weights.\n")  # fmt: skip
    return "".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output-dir", default="output/bench_suite")
    p.add_argument("--smoke", action="store_true", help="the toy configs, tiny (CPU)")
    p.add_argument("--precision", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--shares-steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=None, help="default: each config's")
    p.add_argument("--size", type=int, default=None, help="default: each config's crop")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per item")
    p.add_argument("--compile-budget", type=float, default=120.0, help="per compiled item")
    p.add_argument("--deadline", type=float, default=0, help="seconds for all; 0 = none")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--only", nargs="*", default=[], help="rows whose name holds any of these")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE for all")
    return p


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    a = build_parser().parse_args(argv)
    if a.smoke:
        a.opts = list(TOY_SLIDE) + list(a.opts)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.precision is None:
        a.precision = "bf16" if a.device.startswith("cuda") else "fp32"
    if a.device.startswith("cuda"):  # fp32 matmuls and convolutions left outside autocast
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res = run_suite(a)
    print(write_table(res), flush=True)
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
