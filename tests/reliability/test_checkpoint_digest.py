"""A checkpoint whose bytes changed after it was written is refused, not loaded: torch's zip
reader checks no CRC, so one byte flipped inside a tensor's record (a disk error, a bad copy)
used to load without a word on every path. Each save records the SHA-256 of each entry of the
file; --eval-only, the Python API, pseudo-labelling, a training start and --resume recompute
what they use (the resume: the trainer state and RNG states too). Files without the record
load as before."""

from __future__ import annotations

import importlib.util
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from ovseg_testing import CONFIGS, ROOT, cpu_opts, flip_tensor_byte

from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

import ovseg
from ovseg.engine import AtomicCheckpointer, Trainer
from ovseg.engine.checkpoint import (
    CheckpointReadError,
    load_model_weights,
)
from ovseg.engine.defaults import load_config
from ovseg.engine.resume import rng_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"
SAYS = "changed after it was written"


def _opts(folder: Path, *extra: str) -> list:
    return cpu_opts(
        "SemanticSegmentor", folder / "cache", "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "0",
        *extra,
    )  # fmt: skip


def _model(folder: Path, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(load_config(str(CONFIG), _opts(folder)))


def _flipped(path: Path, tensor: torch.Tensor, name: str = "flipped.pth") -> Path:
    """A copy of ``path`` with one byte of ``tensor``'s record flipped."""
    return flip_tensor_byte(path, tensor, path.parent / name)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, a SemanticSegmentor's model_final.pth saved by ovseg, a copy with one byte of
    its largest tensor flipped)."""
    folder = tmp_path_factory.mktemp("digest")
    model = _model(folder)
    AtomicCheckpointer(model, str(folder)).save("model_final")
    path = folder / "model_final.pth"
    largest = max(model.state_dict().values(), key=lambda t: t.numel())
    return folder, path, _flipped(path, largest)


def _train_net():
    spec = importlib.util.spec_from_file_location("ovseg_train_net", ROOT / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_flipped_byte_is_refused_on_every_weight_load(saved, tmp_path):
    folder, good, bad = saved
    loads = {
        "--eval-only": lambda: _train_net().main(
            default_argument_parser().parse_args(
                [
                    "--config-file",
                    str(CONFIG),
                    "--eval-only",
                    *_opts(folder, "MODEL.WEIGHTS", str(bad), "OUTPUT_DIR", str(tmp_path / "e")),
                ]
            )  # fmt: skip
        ),
        "Python API": lambda: ovseg.Predictor(str(CONFIG), bad, device="cpu", opts=_opts(folder)),
        "pseudo-labelling": lambda: load_model_weights(
            _model(folder, 1), str(bad), complete=False, some=False
        ),
        "training start": lambda: AtomicCheckpointer(
            _model(folder, 1), str(tmp_path / "run")
        ).resume_or_load(str(bad), resume=False),
    }
    for what, load in loads.items():
        with pytest.raises(CheckpointReadError) as err:
            load()
        message = str(err.value)
        assert str(bad) in message and SAYS in message and "'model' entry" in message, what
        assert "disk or copy corruption" in message and "Copy it again" in message, what
        assert "\n" not in message, what
        # train_net.py reports it in one line (exit 2), as any unreadable checkpoint
        assert type(err.value).__name__ == "CheckpointCorruptedError", what
    # the untouched file loads everywhere
    target = _model(folder, 1)
    load_model_weights(target, str(good))
    saved_state = torch.load(good, weights_only=True)["model"]
    assert all(torch.equal(v, saved_state[k]) for k, v in target.state_dict().items())
    ovseg.Predictor(str(CONFIG), good, device="cpu", opts=_opts(folder))


def test_a_checkpoint_without_the_record_loads_as_before(saved, tmp_path):
    folder, good, _ = saved
    data = torch.load(good, weights_only=True)
    record = data["ovseg_meta"]["content_sha256"]
    assert record["format"] == 1 and set(record["entries"]) == {"model"}
    # one of an older ovseg (or converted, or detectron2's): nothing to compare, it loads
    del data["ovseg_meta"]["content_sha256"]
    old = tmp_path / "old.pth"
    torch.save(data, old)
    largest = max(data["model"].values(), key=lambda t: t.numel())
    for path in (old, _flipped(old, largest, "old_flipped.pth")):
        load_model_weights(_model(folder, 1), str(path))


def test_resume_checks_the_trainer_and_rng_states(ade20k_registered, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(str(CONFIG), _opts(tmp_path, "OUTPUT_DIR", str(out)))
    trainer = Trainer(cfg)
    trainer.checkpointer.save("model_0000001", iteration=1)
    path = out / "model_0000001.pth"
    data = torch.load(path, weights_only=True)
    assert {"model", "trainer", "iteration", "rng_states"} <= set(
        data["ovseg_meta"]["content_sha256"]["entries"]
    )
    shutil.copy(_flipped(path, data["rng_states"][0]["torch"]), path)
    with pytest.raises(CheckpointReadError) as err:
        Trainer(cfg).resume_or_load(resume=True)
    message = str(err.value)
    assert str(path) in message and "'rng_states' entry" in message, message
    assert f"{out / 'last_checkpoint'}" in message, message  # how to resume from another
    # its model is intact: as MODEL.WEIGHTS of a new run (the weights alone) it loads
    fresh = load_config(str(CONFIG), _opts(tmp_path, "OUTPUT_DIR", str(tmp_path / "new")))
    fresh.MODEL.WEIGHTS = str(path)
    Trainer(fresh).resume_or_load(resume=False)


def test_a_changed_byte_in_the_metadata_is_refused(ade20k_registered, tmp_path):
    """ovseg_meta holds the record, not its own digest: its recorded config (the SOLVER
    values a resume keeps, the settings an evaluation compares) changed unnoticed."""
    out = tmp_path / "run"
    cfg = load_config(str(CONFIG), _opts(tmp_path, "OUTPUT_DIR", str(out)))
    Trainer(cfg).checkpointer.save("model_0000001", iteration=1)
    path = out / "model_0000001.pth"
    raw = path.read_bytes()
    assert raw.count(b"MAX_ITER: 4\n") == 1
    path.write_bytes(raw.replace(b"MAX_ITER: 4\n", b"MAX_ITER: 5\n"))
    data = torch.load(path, weights_only=True)  # torch reads the changed text back
    assert "MAX_ITER: 5\n" in data["ovseg_meta"]["config"]
    loads = {
        "--resume": lambda: Trainer(cfg).resume_or_load(resume=True),
        "weights": lambda: load_model_weights(_model(tmp_path, 1), str(path)),
    }
    for what, load in loads.items():
        with pytest.raises(CheckpointReadError) as err:
            load()
        assert str(path) in str(err.value) and "'ovseg_meta' entry" in str(err.value), what
    # a record saved before the metadata had a digest still checks its entries, and loads
    del data["ovseg_meta"]["content_sha256"]["meta"]
    old = tmp_path / "old.pth"
    torch.save(data, old)
    load_model_weights(_model(tmp_path, 1), str(old))
    shutil.copy(_flipped(old, max(data["model"].values(), key=lambda t: t.numel())), old)
    with pytest.raises(CheckpointReadError, match="'model' entry"):
        load_model_weights(_model(tmp_path, 1), str(old))


def test_the_digest_is_the_same_for_what_was_saved_and_what_is_read(tmp_path):
    from ovseg.utils.tensor_digest import value_sha256

    state = {
        "model": OrderedDict(w=torch.randn(3, 4), h=torch.randn(5).half(), e=torch.zeros(0)),
        "rng_states": [rng_state()],
        "data": {"seed": 3, "shape": (2, 3), "rate": 0.1, "on": True, "name": None},
        "iteration": 7,
    }
    torch.save(state, tmp_path / "c.pth")
    read = torch.load(tmp_path / "c.pth", weights_only=True)
    for key in state:
        assert value_sha256(state[key], key) == value_sha256(read[key], key), key
    other = {**state["data"], "rate": 0.2}
    assert value_sha256(other, "data") != value_sha256(state["data"], "data")
    # the CLIP teacher's recorded identity (checkpoints hold it) is hashed as before, by the
    # one tensor-hashing helper: the bytes read in place instead of copied
    import hashlib

    from ovseg.clip.cache import state_dict_sha256

    module = torch.nn.BatchNorm1d(7)
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    assert state_dict_sha256(module) == h.hexdigest()
