"""tools/dump_text_embeddings.py: the file holds the teacher's own text embeddings."""

import importlib.util

import pytest
import torch
from ovseg_testing import ROOT

spec = importlib.util.spec_from_file_location(
    "dump_text_embeddings", ROOT / "tools" / "dump_text_embeddings.py"
)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.CLIP.MODEL_NAME", str(ROOT / "configs/clip/tiny_vit.json"),
    "MODEL.CLIP.PRETRAINED", "",
]  # fmt: skip
CONFIG = str(ROOT / "configs/voc/maskclip/maskclip_vitb16_bs1.yaml")


def test_dump_matches_teacher(tmp_path):
    torch.manual_seed(0)  # the tiny CLIP is randomly initialised: seed both builds alike
    out = tool.main(
        ["--config-file", CONFIG, "--vocabulary", "cat,dog,grass", "--templates", "single",
         "--output", str(tmp_path / "text.pt"), *TINY,
         "MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache")]
    )  # fmt: skip
    data = torch.load(out)
    assert data["names"] == ["cat", "dog", "grass"]
    assert data["templates"] == ["a photo of a {}."]
    emb = data["embeddings"]
    assert emb.shape[0] == 3
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    # the same weights give the same fingerprint and embeddings
    from ovseg.clip import build_clip_teacher
    from ovseg.engine.defaults import load_config

    torch.manual_seed(0)
    cfg = load_config(CONFIG, TINY + ["MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache")])
    teacher = build_clip_teacher(cfg)
    assert teacher.fingerprint == data["fingerprint"]
    expected = teacher.encode_text(["cat", "dog", "grass"], ["a photo of a {}."])
    assert torch.allclose(emb, expected, atol=1e-6)


def test_builtin_vocabulary_and_errors(tmp_path):
    out = tool.main(
        ["--config-file", CONFIG, "--vocabulary", "voc20", "--output", str(tmp_path / "v.pt"),
         *TINY]
    )  # fmt: skip
    assert len(torch.load(out)["names"]) == 20
    with pytest.raises(SystemExit, match="is a folder"):
        tool.main(["--config-file", CONFIG, "--vocabulary", "voc20", "--output", str(tmp_path)])
    with pytest.raises(ValueError, match="[Dd]uplicate"):
        tool.main(
            ["--config-file", CONFIG, "--vocabulary", "cat,cat", "--output",
             str(tmp_path / "d.pt"), *TINY]
        )  # fmt: skip
