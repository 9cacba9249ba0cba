"""projects/dense_adapter, the worked example of docs/new_student.md: a student outside the
package, named by its config's EXTENSIONS, that starts exactly at MaskCLIP, learns, and goes
through train_net.py, its checkpoint and the Python API like the built-in students."""

from __future__ import annotations

import json

import pytest
import torch
from ovseg_testing import (
    ROOT,
    fit_steps,
    random_image,
    registered_toy_world,
    run_script,
    tiny_clip_opts,
)

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from ovseg import Predictor
from ovseg.data.dataset_mappers import build_dataset_mapper
from ovseg.engine.defaults import load_config

CONFIG = "projects/dense_adapter/configs/toy_dense_adapter_300_bs16.yaml"


def built(config: str, *opts: str):
    cfg = load_config(str(ROOT / config), list(opts))
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def copypaste_miou(log: str) -> float:
    """The mIoU of detectron2's "copypaste:" lines (a header line, then the values)."""
    lines = [line.split("copypaste: ", 1)[1] for line in log.splitlines() if "copypaste: " in line]
    header = next(i for i, line in enumerate(lines) if line.startswith("mIoU,"))
    return float(lines[header + 1].split(",")[0])


def test_a_fresh_adapter_predicts_exactly_what_maskclip_predicts(tmp_path):
    cache = ["MODEL.CLIP.CACHE_DIR", str(tmp_path)]
    _, adapter = built(CONFIG, *cache)
    # the toy MaskCLIP, its logits upsampled as the adapter's (no refinement, same temperature)
    upsampled = ["MODEL.MASKCLIP.UPSAMPLE_LOGITS", "True"]
    _, maskclip = built("configs/toy/maskclip.yaml", *cache, *upsampled)
    names = ("circle", "square", "triangle", "ring")
    for h, w in [(64, 64), (50, 70)]:  # one size the stride divides, one it does not
        inputs = [{"image": random_image(h, w, seed=h), "vocabulary": names}]
        with torch.no_grad():
            ours = adapter(inputs)[0]["sem_seg"]
            theirs = maskclip(inputs)[0]["sem_seg"]
        assert ours.shape == (4, h, w)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


def test_the_adapter_alone_learns_and_the_teacher_stays_frozen(tmp_path):
    with registered_toy_world(tmp_path / "data", num_train=8, num_val=1):
        cfg, model = built(CONFIG, "MODEL.CLIP.CACHE_DIR", str(tmp_path))
        mapper = build_dataset_mapper(cfg, is_train=True)
        batch = [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("adapter.") for n in trainable)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = fit_steps(model, batch, optimizer, 15)
    assert losses[-1] < 0.5 * losses[0], losses
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


@pytest.mark.slow
def test_train_net_trains_saves_and_reevaluates_it_from_the_saved_config(tmp_path):
    out = tmp_path / "out"
    with registered_toy_world(tmp_path / "data", num_train=8, num_val=2):
        run_script(
            "train_net.py", "--config-file", CONFIG, "OUTPUT_DIR", str(out),
            "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "0",
            "SOLVER.CHECKPOINT_PERIOD", "4", "MODEL.CLIP.CACHE_DIR", str(tmp_path),
            datasets=tmp_path / "data",
        )  # fmt: skip
        weights = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
        keys = set(weights["model"])
        assert any(k.startswith("adapter.") for k in keys)
        assert not any(k.startswith("teacher.") for k in keys)  # the CLIP stays out
        results = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
        trained = [r["sem_seg/mIoU"] for r in results if "sem_seg/mIoU" in r][-1]
        # the run's saved config names the extension: it alone rebuilds the student
        log = run_script(
            "train_net.py", "--config-file", str(out / "config.yaml"), "--eval-only",
            "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"),
            datasets=tmp_path / "data",
        )  # fmt: skip
        assert copypaste_miou(log) == pytest.approx(trained, abs=1e-3)  # printed to 4 decimals
        # and the Python API loads it, the config and module found from the repository root
        predictor = Predictor(ROOT / CONFIG, out / "model_final.pth", device="cpu")
        image = random_image(64, 64).permute(1, 2, 0).numpy()
        prediction = predictor.predict(image, ["circle", "sky"])
        assert prediction.labels.shape == (64, 64)


@pytest.mark.parametrize(
    "config", sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("projects/*/configs/*.yaml"))
)
def test_every_project_config_builds_and_takes_a_training_step(config, tmp_path):
    opts = ["MODEL.CLIP.CACHE_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"]
    if "toy" not in config:  # a real CLIP tag: the tiny random CLIP of the same tower
        opts += tiny_clip_opts(load_config(str(ROOT / config)).MODEL.CLIP.MODEL_NAME)
    cfg, model = built(config, *opts)
    names = model.vocabulary[:3]
    labels = torch.randint(0, len(names), (64, 64))
    batch = [{"image": random_image(64, 64, seed=i), "sem_seg": labels, "vocabulary": names}
             for i in range(2)]  # fmt: skip
    model.train()
    loss = model(batch)["loss_sem_seg"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
