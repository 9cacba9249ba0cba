"""A checkpoint that does not fit the model is an error naming both architectures, not a
warning followed by mIoU 0; --resume into another architecture's run writes nothing."""

from __future__ import annotations

import importlib.util
import pickle
import urllib.error

import numpy as np
import pytest
import torch
from ovseg_testing import CONFIGS, ROOT, cpu_opts, tiny_zegclip

from detectron2.engine import default_argument_parser

from ovseg.engine import AtomicCheckpointer, setup
from ovseg.engine.checkpoint import load_model_weights
from ovseg.engine.checkpoint_fit import CheckpointMismatchError
from ovseg.engine.checks import check_run_files
from ovseg.engine.defaults import load_config
from ovseg.utils.cli import run_reporting_errors
from ovseg.utils.downloads import WeightsDownloadError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEMFPN = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"
LSEG = CONFIGS / "ade20k/lseg/lseg_vitb16_80k_bs16_ovseg-variant.yaml"


def _train_net():
    spec = importlib.util.spec_from_file_location("ovseg_train_net", ROOT / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(model, folder, name="model_final"):
    AtomicCheckpointer(model, str(folder)).save(name)
    return str(folder / f"{name}.pth")


@pytest.fixture(scope="module")
def zegclip_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zegclip_run")
    return _save(tiny_zegclip(folder / "cache"), folder)


def test_checkpoint_records_its_architecture(zegclip_checkpoint):
    meta = torch.load(zegclip_checkpoint, weights_only=True)["ovseg_meta"]
    assert meta["meta_architecture"] == "ZegCLIP" and meta["ovseg_version"]


def test_eval_only_refuses_another_architectures_checkpoint(zegclip_checkpoint, tmp_path):
    opts = cpu_opts("SemanticSegmentor", tmp_path / "cache")
    opts += ["MODEL.WEIGHTS", zegclip_checkpoint, "OUTPUT_DIR", str(tmp_path / "eval")]
    args = default_argument_parser().parse_args(
        ["--config-file", str(SEMFPN), "--eval-only", *opts]
    )
    with pytest.raises(CheckpointMismatchError) as err:
        _train_net().main(args)
    message = str(err.value)
    assert zegclip_checkpoint in message
    assert "a ZegCLIP checkpoint" in message and "the model is SemanticSegmentor" in message
    assert "weights are missing" in message


def test_a_complete_checkpoint_of_the_same_architecture_loads(zegclip_checkpoint, tmp_path):
    # the frozen CLIP tower is not in the file: it is the named exception, not a misfit
    model = tiny_zegclip(tmp_path / "cache", seed=1)
    load_model_weights(model, zegclip_checkpoint)
    saved = torch.load(zegclip_checkpoint, weights_only=True)["model"]
    assert torch.equal(model.backbone.prompts, saved["backbone.prompts"])


def test_a_model_without_weights_refuses_another_methods_checkpoint(zegclip_checkpoint, tmp_path):
    import ovseg

    # MaskCLIP holds nothing outside its frozen CLIP: another method's file used to be
    # accepted with every weight ignored
    with pytest.raises(CheckpointMismatchError) as err:
        ovseg.Predictor("toy/maskclip.yaml", zegclip_checkpoint, device="cpu")
    assert "a ZegCLIP checkpoint" in str(err.value) and "MaskCLIP needs no checkpoint" in str(
        err.value
    )
    # its own (empty) checkpoint still loads
    maskclip = ovseg.Predictor("toy/maskclip.yaml", device="cpu").model
    ovseg.Predictor("toy/maskclip.yaml", _save(maskclip, tmp_path), device="cpu")
    # a file that is not there is named as such (detectron2 only asserts)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth \(MODEL.WEIGHTS\) does not exist"):
        load_model_weights(maskclip, str(tmp_path / "nope.pth"))


def test_model_weights_of_trained_parts_must_fit(zegclip_checkpoint, tmp_path):
    cfg = load_config(str(SEMFPN), cpu_opts("SemanticSegmentor", tmp_path / "cache"))
    from ovseg.engine import Trainer

    model = Trainer.build_model(cfg)
    # a run's checkpoint used as MODEL.WEIGHTS to start training (not a resume)
    with pytest.raises(CheckpointMismatchError, match="a ZegCLIP checkpoint"):
        AtomicCheckpointer(model, str(tmp_path)).resume_or_load(zegclip_checkpoint, resume=False)

    # a converted file without ovseg's record initialises part of a model: some must fit
    state = model.state_dict()
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.bottom_up.")}
    partial = tmp_path / "backbone.pth"
    torch.save({"model": backbone, "__author__": "converter"}, partial)
    AtomicCheckpointer(model).resume_or_load(str(partial), resume=False)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"model": {"head.weight": torch.zeros(3)}}, unrelated)
    with pytest.raises(CheckpointMismatchError, match="none of its weights fit"):
        AtomicCheckpointer(model).resume_or_load(str(unrelated), resume=False)


def test_an_imagenet_pkl_loads_through_the_matching_heuristics(tmp_path):
    # the ImageNet backbones of Base-xpm.yaml and the SemFPN baseline (torchvision or MSRA
    # .pkl, "matching_heuristics": True): keys without the model's prefixes, matched by suffix
    cfg = load_config(str(SEMFPN), cpu_opts("SemanticSegmentor", tmp_path / "cache"))
    from ovseg.engine import Trainer

    model = Trainer.build_model(cfg)
    prefix = "backbone.bottom_up."
    g = torch.Generator().manual_seed(0)
    source = {
        k[len(prefix) :]: torch.randn(v.shape, generator=g).numpy()
        for k, v in model.state_dict().items()
        if k.startswith(prefix) and v.is_floating_point()
    }
    path = tmp_path / "R-18.pkl"
    data = {"model": source, "__author__": "torchvision", "matching_heuristics": True}
    path.write_bytes(pickle.dumps(data, protocol=2))
    AtomicCheckpointer(model, str(tmp_path)).resume_or_load(str(path), resume=False)
    state = model.state_dict()
    for key, value in source.items():
        assert torch.equal(state[prefix + key], torch.from_numpy(value)), key
    unrelated = tmp_path / "unrelated.pkl"
    data["model"] = {"fc.weight": np.zeros((3, 5), np.float32)}
    unrelated.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(CheckpointMismatchError, match="none of its weights fit"):
        AtomicCheckpointer(model).resume_or_load(str(unrelated), resume=False)


def test_resume_into_another_architectures_run_writes_nothing(tmp_path):
    out = tmp_path / "run"
    first = default_argument_parser().parse_args(
        ["--config-file", str(SEMFPN), "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]
    )
    setup(first)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "config.yaml" in before
    again = default_argument_parser().parse_args(
        ["--config-file", str(LSEG), "--resume", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]
    )
    with pytest.raises(
        ValueError, match="its run was a SemanticSegmentor .* this config is a LSeg"
    ):
        setup(again)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before


def test_train_net_refuses_a_resume_into_another_architecture_in_one_line(tmp_path, capsys):
    # train_net.py's check before launch (no set-up here: its loggers would outlive capsys)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("MODEL:\n  META_ARCHITECTURE: SemanticSegmentor\n")
    cfg = load_config(str(LSEG), ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)])
    assert run_reporting_errors("train_net.py", lambda: check_run_files(cfg, resume=True)) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_net.py: error: --resume into ") and err.count("\n") == 1, err
    assert "its run was a SemanticSegmentor" in err


def test_an_offline_weights_url_says_which_file_to_fetch(tmp_path, monkeypatch):
    # detectron2:// weights download through iopath; offline, the error names the file's
    # URL and the key to point at a copy, not urllib's traceback
    def offline(path, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    ckpt = AtomicCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path))
    monkeypatch.setattr(ckpt.path_manager, "get_local_path", offline)
    with pytest.raises(WeightsDownloadError) as info:
        ckpt.load("detectron2://DeepLab/R-103.pkl")
    message = str(info.value)
    assert "https://dl.fbaipublicfiles.com/detectron2/DeepLab/R-103.pkl" in message, message
    assert "set MODEL.WEIGHTS to its path" in message and "R-103.pkl weights" in message
    assert not list(tmp_path.iterdir())
