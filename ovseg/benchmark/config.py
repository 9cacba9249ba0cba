"""The config a benchmark runs: a config file, the benchmark's settings, then overrides."""

from __future__ import annotations

from typing import Sequence

from detectron2.config import CfgNode

from .timing import check_device

__all__ = ["benchmark_config"]


def benchmark_config(
    config_file: str,
    opts: Sequence[str] = (),
    *,
    device: str,
    pretrained: str = "",
    cache_dir: str = "",
    settings: Sequence[str] = (),
) -> CfgNode:
    """Load ``config_file`` with the device, CLIP weights and ``settings``, then ``opts``.

    Args:
        config_file (str): any ovseg config.
        opts: KEY VALUE overrides from the command line, applied last.
        device (str): "cpu" or "cuda[:N]" (MODEL.DEVICE).
        pretrained (str): MODEL.CLIP.PRETRAINED; "" builds random CLIP weights (the
            architecture only, no download: speed does not depend on the weights).
        cache_dir (str): MODEL.CLIP.CACHE_DIR; "" keeps the config's.
        settings: KEY VALUE pairs the benchmark sets, before ``opts``.

    Returns:
        CfgNode: the merged config (MODEL.WEIGHTS, the image encoders' ImageNet weights and
        XPM's teacher checkpoint cleared: nothing is loaded or downloaded).
    """
    from ..engine.checks import check_dataset_names
    from ..engine.defaults import load_config

    check_device(device)
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got {list(opts)}")
    overrides = ["MODEL.DEVICE", device, "MODEL.CLIP.PRETRAINED", pretrained, "MODEL.WEIGHTS", ""]
    # LSeg's paper encoders (torchvision / timm ImageNet weights): random, as the CLIP towers
    overrides += ["MODEL.TORCHVISION_RESNET.WEIGHTS", "", "MODEL.VIT_BACKBONE.TIMM_PRETRAINED", ""]
    # XPM's student starts from the teacher's checkpoint: random, as MODEL.WEIGHTS
    overrides += ["MODEL.XPM.TEACHER_WEIGHTS", ""]
    if cache_dir:
        overrides += ["MODEL.CLIP.CACHE_DIR", cache_dir]
    cfg = load_config(config_file, overrides + list(settings) + list(opts))
    check_dataset_names(cfg)  # a misspelt DATASETS name: the closest names, not a later riddle
    return cfg
