"""Speed benchmarks: training throughput of any config (iterations/s, images/s, memory, the
data-loading share, FLOPs and MFU), the CLIP teacher, pseudo-labelling, and a training
step's or a test forward's roofline floor on a named GPU counted on the CPU (``roofline``).

``tools/benchmark.py`` is their command line; the helpers here (device synchronisation,
median timers, peak memory, FLOP counting, device peak FLOP/s) serve any other measurement.
"""

from .config import benchmark_config
from .flops import PEAK_TFLOPS, flop_counter, peak_tflops_for
from .pseudo import benchmark_pseudo_labelling, store_rate_on_images, time_pseudo_labelling
from .roofline_runs import benchmark_roofline
from .synthetic import synthetic_batch, synthetic_labels, synthetic_side
from .teacher import benchmark_teacher, positional_embedding_for
from .timing import CLOCKS, check_device, default_device, peak_memory, synchronize, time_calls
from .train import DATA_SOURCES, PRECISIONS, benchmark_training, freeze_modules, training_config

__all__ = [
    "CLOCKS",
    "DATA_SOURCES",
    "PEAK_TFLOPS",
    "PRECISIONS",
    "benchmark_config",
    "benchmark_pseudo_labelling",
    "benchmark_roofline",
    "benchmark_teacher",
    "benchmark_training",
    "check_device",
    "default_device",
    "flop_counter",
    "freeze_modules",
    "peak_memory",
    "peak_tflops_for",
    "positional_embedding_for",
    "store_rate_on_images",
    "synchronize",
    "synthetic_batch",
    "synthetic_labels",
    "synthetic_side",
    "time_calls",
    "time_pseudo_labelling",
    "training_config",
]
