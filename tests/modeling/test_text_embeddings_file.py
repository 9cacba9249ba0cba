"""MODEL.OVSEG.TEXT_EMBEDDINGS_FILE: tiny fp16 files in the official formats (ZegCLIP's .npy,
MaskCLIP's torch-saved tensor) become the classifiers' rows exactly, for ZegCLIP, MaskCLIP+
and its MaskCLIP teacher; bad files and names they cannot describe are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import (
    tiny_lseg_cfg,
    tiny_maskclip_cfg,
    tiny_maskclip_plus,
    tiny_zegclip_cfg,
    two_region_batch,
)

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ovseg.convert.core import ConversionReport
from ovseg.convert.maskclip_plus import check_text
from ovseg.modeling.text_embeddings_file import file_classes, read_embeddings_file
from ovseg.pseudo import labeller_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ("red thing", "blue thing", "green thing")  # two_region_batch's vocabulary
VOCAB = ",".join(NAMES)
KEY = "MODEL.OVSEG.TEXT_EMBEDDINGS_FILE"


def fp16_rows(k: int, d: int = 32, seed: int = 0) -> np.ndarray:
    """(k, d) unit rows rounded to fp16, as the official notebooks and scripts make them."""
    rows = torch.randn(k, d, generator=torch.Generator().manual_seed(seed))
    return F.normalize(rows.half().float(), dim=-1).half().numpy()


def write_npy(path, rows: np.ndarray) -> str:
    """ZegCLIP's format: np.save of the fp16 array (get_embedding.ipynb)."""
    np.save(path, rows)
    return str(path)


def write_pth(path, rows: np.ndarray) -> str:
    """MaskCLIP's format: torch.save of a bare float32 tensor (prompt_engineering.py:86,93)."""
    torch.save(torch.from_numpy(rows).float(), path)
    return str(path)


def zegclip(tmp_path, file: str, *opts: str):
    cfg = tiny_zegclip_cfg(tmp_path / "cache")
    cfg.merge_from_list(["MODEL.OVSEG.TEST_VOCABULARY", VOCAB, KEY, file, *opts])
    torch.manual_seed(0)
    return build_model(cfg)


def test_npy_rows_enter_zegclip_exactly_and_as_stored(tmp_path):
    rows = fp16_rows(3)
    model = zegclip(tmp_path, write_npy(tmp_path / "voc.npy", rows))
    want = torch.from_numpy(rows).float()
    assert read_embeddings_file(str(tmp_path / "voc.npy")).dtype == torch.float32
    assert torch.equal(model.text_embeddings(NAMES), want)
    # any subset in any order (the seen classes in training), by name
    assert torch.equal(model.text_embeddings(["green thing", "red thing"]), want[[2, 0]])
    # the decoder gets the rows as stored, not renormalised (zegclip.py:174-176)
    seen = []
    model.decoder.register_forward_hook(lambda m, args, out: seen.append(args[2]))
    model.eval()
    with torch.no_grad():
        out = model([{"image": two_region_batch()[0]["image"]}])[0]["sem_seg"]
    assert out.shape == (3, 32, 32) and torch.isfinite(out).all()
    assert torch.equal(seen[0], want) and not torch.equal(F.normalize(want, dim=-1), want)
    # a training step reads the file too
    model.train()
    seen.clear()
    losses = model(two_region_batch())
    sum(losses.values()).backward()
    assert torch.equal(seen[0], want)


def test_file_changes_zegclip_predictions(tmp_path):
    image = [{"image": two_region_batch()[0]["image"]}]
    outs = []
    for seed in (0, 1):
        path = write_npy(tmp_path / f"{seed}.npy", fp16_rows(3, seed=seed))
        with torch.no_grad():
            outs.append(zegclip(tmp_path, path).eval()(image)[0]["sem_seg"])
    assert not torch.allclose(outs[0], outs[1])


def test_maskclip_uses_file_rows_as_stored(tmp_path):
    # the official cls_seg is a 1x1 conv with the stored rows (maskclip_head.py:123-125):
    # rows twice as long give logits twice as large (no renormalisation)
    logits = []
    for scale in (1.0, 2.0):
        path = tmp_path / f"rows{scale}.pth"
        opts = (KEY, str(path), "MODEL.MASKCLIP.UPSAMPLE_LOGITS", "True")
        cfg = tiny_maskclip_cfg(tmp_path / "cache", *opts)
        names = file_classes(cfg)  # the dataset's classes, in label order
        write_pth(path, fp16_rows(len(names)) * np.float16(scale))
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        s = model.teacher.stride
        x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(1)) * 50
        with torch.no_grad():
            logits.append(model.predict(x, model.text_embeddings(names[:3])))
    torch.testing.assert_close(logits[1], 2 * logits[0])


def test_a_class_with_synonyms_is_one_row(tmp_path):
    # ADE's "road, route": one class, one row of the file, never split into its words
    path = write_npy(tmp_path / "syn.npy", fp16_rows(3))
    model = zegclip(tmp_path, path, "MODEL.OVSEG.TEST_VOCABULARY", "a; road, route; b").eval()
    assert model.synonym_merge == "max" and model.vocabulary[1] == "road, route"
    image = two_region_batch()[0]["image"]
    with torch.no_grad():
        out = model([{"image": image}])[0]["sem_seg"]
    assert out.shape == (3, 32, 32)
    # the export's fixed-vocabulary graph reads the file's rows the same way
    from ovseg.export import FixedVocabularySegmentor

    with torch.no_grad():
        fixed = FixedVocabularySegmentor(model, model.vocabulary)(image[None].float())[0]
    torch.testing.assert_close(fixed, out, rtol=1e-5, atol=1e-6)


def test_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="TEXT_EMBEDDINGS_FILE.*does not exist"):
        zegclip(tmp_path, str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match="holds 4 rows.*has 3 classes"):
        zegclip(tmp_path, write_npy(tmp_path / "k4.npy", fp16_rows(4)))
    with pytest.raises(ValueError, match="16-dimensional.*32-dimensional"):
        zegclip(tmp_path, write_npy(tmp_path / "d16.npy", fp16_rows(3, d=16)))
    torch.save({"emb": torch.zeros(3, 32)}, tmp_path / "dict.pth")
    with pytest.raises(ValueError, match="holds a dict; expected one .K, D."):
        zegclip(tmp_path, str(tmp_path / "dict.pth"))
    (tmp_path / "rows.txt").write_text("0")
    with pytest.raises(ValueError, match="suffix '.txt'"):
        zegclip(tmp_path, str(tmp_path / "rows.txt"))
    good = write_npy(tmp_path / "good.npy", fp16_rows(3))
    # names the file cannot describe: a free (demo) vocabulary
    model = zegclip(tmp_path, good).eval()
    image = {"image": two_region_batch()[0]["image"], "vocabulary": ["red thing", "unicorn"]}
    with pytest.raises(ValueError, match=r"\['unicorn'\] have no row.*free vocabulary"):
        model([image])
    # a method that computes its embeddings refuses the key
    cfg = tiny_lseg_cfg(tmp_path / "cache")
    cfg.merge_from_list(["MODEL.OVSEG.TEST_VOCABULARY", VOCAB, KEY, good])
    with pytest.raises(ValueError, match="ZegCLIP, MaskCLIP and MaskCLIP\\+ only; LSeg"):
        build_model(cfg)
    cfg.merge_from_list(["MODEL.OVSEG.TEST_VOCABULARY", ""])
    with pytest.raises(ValueError, match="needs the classes its rows are for"):
        build_model(cfg)


def test_maskclip_plus_student_and_teacher_read_the_file(tmp_path):
    # as the official PASCAL Context run: a learnt background (cls_bg) outside the file
    names = ("background", *NAMES)
    rows = fp16_rows(3)
    model = tiny_maskclip_plus(
        tmp_path / "cache",
        "MODEL.OVSEG.TEST_VOCABULARY", ",".join(names),
        "MODEL.OVSEG.BG_EMBED", "True",
        KEY, write_pth(tmp_path / "voc_RN50_clip_text.pth", rows),
        unseen=("blue thing", "green thing"),
        pseudo_label_pixels="unseen",
        pseudo_label_source="online_augmented",
    )  # fmt: skip
    want = torch.from_numpy(rows).float()
    text = model.text_embeddings(names)
    assert torch.equal(text[1:], want)  # as stored, not renormalised (cls_seg)
    bg = model.classifier.bg_embed.embedding.detach()
    assert torch.allclose(text[0], F.normalize(bg, dim=-1)[0])
    # the teacher (pseudo-labels) scores with the same rows (maskclip_head.py:54-56)
    assert torch.equal(model.labeller.text_embeddings(NAMES[1:]), want[1:])
    seen = []
    model.labeller.classifier.register_forward_hook(lambda m, args, out: seen.append(out))
    batch = [
        {**x, "sem_seg": torch.where(x["sem_seg"] == 255, 255, x["sem_seg"] + 1),
         "vocabulary": list(names)}
        for x in two_region_batch()
    ]  # fmt: skip
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert torch.isfinite(losses["loss_sem_seg"]) and torch.equal(seen[0], want[1:])
    with pytest.raises(ValueError, match=r"\['background'\] have no row"):
        model.labeller.text_embeddings(names)
    # converting an official checkpoint compares its classifier with the file's rows
    report = ConversionReport("maskclip_plus")
    check_text({"decode_head.text_embeddings": want}, model, names, report)
    (check,) = report.teacher
    assert check.teacher.endswith("TEXT_EMBEDDINGS_FILE") and check.diff < 1e-6


def test_store_fingerprint_knows_the_file(tmp_path):
    cfg = tiny_zegclip_cfg(tmp_path / "cache")
    cfg.MODEL.META_ARCHITECTURE = "MaskCLIP"
    assert "text_embeddings_file" not in labeller_settings(cfg)  # older stores still match
    ids = []
    for seed in (0, 1):
        cfg.merge_from_list([KEY, write_npy(tmp_path / f"{seed}.npy", fp16_rows(3, seed=seed))])
        ids.append(labeller_settings(cfg)["text_embeddings_file"])
    assert ids[0].startswith("sha256:") and ids[0] != ids[1]
