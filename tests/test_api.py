"""ovseg.Predictor on the toy world with the shipped toy CLIP: labels, scores, batches, inputs,
errors, mask-student outputs, and the README's example run as written."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from ovseg_testing import ROOT
from PIL import Image, ImageOps

import ovseg
from ovseg.api import model_input
from ovseg.data.datasets import toy_world as tw

SHAPES = list(tw.SHAPES)


@pytest.fixture(scope="module")
def predictor():
    return ovseg.Predictor("toy/maskclip.yaml", device="cpu")


def _scene(index: int):
    return tw.render_scene(tw.sample_scene(tw.sample_rng(0, "validation", index)))


def test_prediction_fields_and_probabilities(predictor):
    image, _ = _scene(1)
    pred = predictor.predict(image, SHAPES)
    assert isinstance(pred, ovseg.Prediction)
    assert pred.names == tuple(SHAPES)
    assert pred.labels.shape == (64, 64) and pred.labels.dtype == np.int64
    assert pred.scores.shape == (8, 64, 64) and pred.scores.dtype == np.float32
    # MaskCLIP without key smoothing: a softmax over the classes
    np.testing.assert_allclose(pred.scores.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.labels, pred.scores.argmax(axis=0))
    assert set(pred.masks) == {SHAPES[k] for k in np.unique(pred.labels)}
    for name, mask in pred.masks.items():
        np.testing.assert_array_equal(mask, pred.labels == SHAPES.index(name))
    assert pred.instances is None and pred.panoptic is None


def test_shapes_are_named_on_their_pixels(predictor):
    """The toy CLIP's dense map names the shapes (chance 1/8): a batch of 12 scenes."""
    scenes = [_scene(i) for i in range(12)]
    preds = predictor.predict([image for image, _ in scenes], SHAPES)
    hits = total = 0
    for pred, (_, truth) in zip(preds, scenes):
        shape_pixels = truth > 0
        hits += int((pred.labels[shape_pixels] == truth[shape_pixels] - 1).sum())
        total += int(shape_pixels.sum())
    assert hits / total > 0.7, hits / total
    # a one-shape scene (a crescent) is named on every one of its pixels
    image, truth = scenes[0]
    assert set(np.unique(truth)) == {0, tw.CLASSES.index("crescent")}
    assert (preds[0].labels[truth > 0] == SHAPES.index("crescent")).all()


def test_a_batch_equals_single_calls_and_inputs_are_alike(predictor, tmp_path):
    a, _ = _scene(3)
    b, _ = _scene(4)
    small = np.ascontiguousarray(b[:40, :56])  # another size: its own forward
    batch = predictor.predict([a, b, small], "circle, square, star, crescent")
    for image, got in zip((a, b, small), batch):
        one = predictor.predict(image, ["circle", "square", "star", "crescent"])
        np.testing.assert_allclose(got.scores, one.scores, atol=1e-5)
        np.testing.assert_array_equal(got.labels, one.labels)
    assert batch[2].labels.shape == (40, 56)
    path = tmp_path / "scene.png"
    Image.fromarray(a).save(path)
    for same in (path, str(path), Image.fromarray(a)):
        np.testing.assert_array_equal(
            predictor.predict(same, batch[0].names).labels, batch[0].labels
        )


def test_builtin_vocabulary(predictor):
    pred = predictor.predict(_scene(0)[0], "voc20")
    assert len(pred.names) == 20 and pred.scores.shape == (20, 64, 64)


@pytest.mark.parametrize(
    "image, vocabulary, message",
    [
        (np.zeros((8, 8, 3), np.float32), SHAPES, "uint8"),
        (np.zeros((8, 8), np.uint8), SHAPES, r"\(H, W, 3\)"),
        (np.zeros((8, 8), np.uint8), SHAPES, r"repeat a grayscale"),
        (np.zeros((8, 8, 4), np.uint8), SHAPES, r"drop an alpha channel"),
        (np.zeros((8, 8, 3), np.uint16), SHAPES, r"x // 257"),
        # an int64 array of 0..255 (np.array of a list, skimage) is not a float in [0, 1]
        (np.zeros((8, 8, 3), np.int64), SHAPES, r"int64; convert it, e.g. x.astype\(np.uint8\)"),
        (np.zeros((8, 8, 3), bool), SHAPES, r"x \* 255 for a bool mask"),
        (np.zeros((8, 8, 3), np.float64), SHAPES, r"\(x \* 255\).round\(\)"),
        (np.zeros((8, 8, 3), np.uint8), "ade151", "did you mean the builtin 'ade150'"),
        (np.zeros((8, 8, 3), np.uint8), [], "empty"),
        (np.zeros((8, 8, 3), np.uint8), "", "Empty vocabulary"),
        (np.zeros((8, 8, 3), np.uint8), "no_such_builtin", "not a builtin"),
        (np.zeros((8, 8, 3), np.uint8), ["cat", "Cat"], "Duplicate"),
        (np.zeros((8, 8, 3), np.uint8), 5, "vocabulary must be"),
        ([], SHAPES, "no images"),
        (np.zeros((0, 8, 3), np.uint8), SHAPES, r"image 0 is empty: its shape is \(0, 8, 3\)"),
    ],
)
def test_bad_inputs_are_refused_clearly(predictor, image, vocabulary, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(image, vocabulary)


def test_bad_construction_is_refused_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file nor a path under"):
        ovseg.Predictor("toy/no_such.yaml")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ovseg.Predictor("toy/maskclip.yaml").predict(tmp_path / "missing.png", SHAPES)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is unavailable"):
            ovseg.Predictor("toy/maskclip.yaml", device="cuda")
    with pytest.raises(ValueError, match="'gpu' is not a torch device; use 'cpu', 'cuda'"):
        ovseg.Predictor("toy/maskclip.yaml", device="gpu")


def test_a_thin_strip_is_resized_to_at_least_one_pixel(predictor):
    # the test resize's long-side limit rounds a 3x500 strip's short side to 0 pixels
    strip = np.random.default_rng(0).integers(0, 256, (3, 500, 3), dtype=np.uint8)
    pred = predictor.predict(strip, SHAPES)
    assert pred.labels.shape == (3, 500) and pred.scores.shape == (len(SHAPES), 3, 500)


def test_a_json_path_and_a_threshold_of_the_wrong_type(predictor, tmp_path):
    image, _ = _scene(0)
    words = tmp_path / "words.json"
    words.write_text('["circle", "square"]')
    assert predictor.predict(image, words).names == ("circle", "square")  # a pathlib.Path
    with pytest.raises(ValueError, match="must be a number in \\(0, 1\\], got '0.5'"):
        predictor.predict(image, SHAPES, background_threshold="0.5")
    half = np.float32(0.5)  # numpy numbers are numbers
    assert predictor.predict(image, SHAPES, background_threshold=half).names[0] == "background"


def test_one_class_vocabulary(predictor):
    image, _ = _scene(0)
    for vocabulary in (["circle"], "circle;", " circle ;"):
        pred = predictor.predict(image, vocabulary)
        assert pred.names == ("circle",) and (pred.labels == 0).all()
    # one word alone reads as a builtin name; the error says how to write one class
    with pytest.raises(ValueError, match="one class is written with a ';': 'circle;'"):
        predictor.predict(image, "circle")
    # with a background threshold one name is a real question: where is the crescent?
    pred = predictor.predict(image, "crescent;", background_threshold=0.5)
    assert pred.names == ("background", "crescent")


def test_user_mistakes_in_construction_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth \(MODEL.WEIGHTS\) does not exist"):
        ovseg.Predictor("toy/maskclip.yaml", tmp_path / "nope.pth", device="cpu")
    # overrides as one string are split as a shell would
    predictor = ovseg.Predictor(
        "toy/maskclip.yaml", device="cpu", opts="TEST.DETECTIONS_PER_IMAGE 7"
    )
    assert predictor.cfg.TEST.DETECTIONS_PER_IMAGE == 7
    with pytest.raises(
        ValueError, match=r"TEST_VOCABLARY \(set in .*\) is not a config key; did you"
    ):
        ovseg.Predictor("toy/maskclip.yaml", opts=["MODEL.OVSEG.TEST_VOCABLARY", "a"])
    # the shipped CLIP checkpoint, or an official one, passed as the model's weights
    lseg = "toy/lseg_toyrn_400_bs8.yaml"
    clip = ROOT / "checkpoints/toy_clip_rn.pt"
    with pytest.raises(ValueError, match="toy_clip_rn.pt holds .*goes in MODEL.CLIP.PRETRAINED"):
        ovseg.Predictor(lseg, clip, device="cpu")
    official = tmp_path / "official.ckpt"
    torch.save({"state_dict": {"net.head.weight": torch.zeros(2)}, "epoch": 3}, official)
    with pytest.raises(ValueError, match="'epoch', 'state_dict'.*tools/convert_checkpoint.py"):
        ovseg.Predictor(lseg, official, device="cpu")


FREESEG = "toy/freeseg_toyrn_alltask_2400_bs8.yaml"


def test_default_device_and_weights(tmp_path):
    default = ovseg.Predictor(FREESEG)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert default.model.device.type == want
    # a checkpoint of the model with one weight changed is what the predictor then holds
    state = {k: v.detach().cpu().clone() for k, v in default.model.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] += 1.0
    torch.save({"model": state}, tmp_path / "model.pth")
    loaded = ovseg.Predictor(FREESEG, tmp_path / "model.pth", device="cpu")
    torch.testing.assert_close(loaded.model.state_dict()[key], state[key])
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(Exception, match="notes.pth"):
        ovseg.Predictor(FREESEG, tmp_path / "notes.pth", device="cpu")


def test_mask_student_gives_instances_and_panoptic():
    tasks = '("semantic", "instance", "panoptic")'
    torch.manual_seed(0)  # random weights: the same ones every run
    predictor = ovseg.Predictor(
        ROOT / "configs/toy/freeseg_toyrn_alltask_2400_bs8.yaml",
        device="cpu",
        opts=["MODEL.FREESEG.TEST_TASKS", tasks],
    )
    image = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    pred = predictor.predict(image, "circle,square,background")
    assert pred.scores.shape == (3, 64, 48)
    assert pred.instances.image_size == (64, 48)
    ids, segments = pred.panoptic
    assert ids.shape == (64, 48) and isinstance(segments, list)

    # instance and segment classes index the names the user gets back
    from ovseg.modeling.vocabulary_scores import VocabularyPlan

    def classes(p):
        return p.instances.pred_classes.tolist(), [s["category_id"] for s in p.panoptic[1]]

    plain = predictor.predict(image, "circle,square,star")
    bg = predictor.predict(image, "circle,square,star", background_threshold=0.5)
    assert bg.names == ("background", "circle", "square", "star")
    want = classes(plain)
    assert classes(bg) == ([c + 1 for c in want[0]], [c + 1 for c in want[1]])
    aug = predictor.predict(image, "circle,square", augment_vocabulary="toy9")
    full = predictor.predict(image, VocabularyPlan.make(["circle", "square"], "toy9").model_names)
    assert aug.names == ("circle", "square", "other") and len(full.names) > 3
    inst, seg = classes(full)
    assert max(inst) > 2  # the added classes were predicted, as "other" below
    assert classes(aug) == ([min(c, 2) for c in inst], [min(c, 2) for c in seg])


def test_readme_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the shipped config loads from anywhere
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    pred = namespace["pred"]
    assert pred.labels.shape == (64, 64)
    assert pred.names[pred.labels[pred.masks["crescent"]][0]] == "crescent"


def test_synonyms_background_and_augmented_vocabulary(predictor):
    image, _ = _scene(2)
    plain = predictor.predict(image, SHAPES)
    # synonyms: "circle, circle" scores as "circle" (the max over one word)
    syn = predictor.predict(image, "circle, Circle; " + "; ".join(SHAPES[1:]))
    assert syn.names == ("circle, Circle", *SHAPES[1:])
    np.testing.assert_allclose(syn.scores, plain.scores, atol=1e-6)
    # a class whose one word a larger class holds too keeps it: "square" can still win
    squares, _ = _scene(7)  # a scene where "square" wins pixels
    shared = predictor.predict(squares, "circle, square; " + "; ".join(SHAPES[1:]))
    np.testing.assert_allclose(shared.scores, predictor.predict(squares, SHAPES).scores, atol=1e-6)
    assert SHAPES[1] == "square" and (shared.labels == 1).sum() > 500
    # background by a threshold: added first, where no shape reaches it
    threshold = float(np.median(plain.scores.max(axis=0)))
    bg = predictor.predict(image, SHAPES, background_threshold=threshold)
    assert bg.names == ("background", *SHAPES)
    np.testing.assert_array_equal(bg.labels == 0, plain.scores.max(axis=0) < threshold)
    np.testing.assert_array_equal(bg.labels[bg.labels > 0] - 1, plain.labels[bg.labels > 0])
    # the user's background, written with a synonym, is the threshold's, at its place
    mine = predictor.predict(image, f"{SHAPES[0]}; background, backdrop; " + "; ".join(SHAPES[1:]),
                             background_threshold=threshold)  # fmt: skip
    assert mine.names == (SHAPES[0], "background, backdrop", *SHAPES[1:])
    np.testing.assert_array_equal(mine.labels == 1, bg.labels == 0)
    # augmented: the toy9 classes not asked for become "other"
    aug = predictor.predict(image, SHAPES[:3], augment_vocabulary="toy9")
    assert aug.names == (*SHAPES[:3], "other")
    full = predictor.predict(image, [*SHAPES[:3], "background", *SHAPES[3:]])
    np.testing.assert_array_equal(aug.labels == 3, full.labels >= 3)
    with pytest.raises(ValueError, match=r"background threshold must be in \(0, 1\]"):
        predictor.predict(image, SHAPES, background_threshold=2.0)


def test_a_trainable_student_without_weights_is_warned_about(tmp_path, caplog):
    """A student's random initialisation predicts nothing meaningful: said once at build; a
    training-free MaskCLIP, or a student given its weights, builds without the warning."""
    lseg = ROOT / "configs/toy/lseg_toyrn_400_bs8.yaml"
    with caplog.at_level("WARNING", logger="ovseg.api"):
        student = ovseg.Predictor(lseg, device="cpu")
    warned = [r.getMessage() for r in caplog.records if "No weights given" in r.getMessage()]
    assert len(warned) == 1 and "LSeg" in warned[0] and "model_final.pth" in warned[0]
    torch.save({"model": student.model.state_dict()}, tmp_path / "model.pth")
    caplog.clear()
    with caplog.at_level("WARNING", logger="ovseg.api"):
        ovseg.Predictor(lseg, tmp_path / "model.pth", device="cpu")
        ovseg.Predictor("toy/maskclip.yaml", device="cpu")
    assert not [r for r in caplog.records if "No weights given" in r.getMessage()]


def test_a_pil_image_is_read_as_its_file(predictor, tmp_path):
    # Image.open's image of a phone photo (EXIF orientation 6: stored turned) and of a 16-bit
    # PNG: the same prediction as the file's path, not a turned map or a white image
    image, _ = _scene(2)
    tall = np.ascontiguousarray(image[:, :40])
    exif = Image.Exif()
    exif[0x0112] = 6
    photo, gray16 = tmp_path / "photo.jpg", tmp_path / "gray16.png"
    Image.fromarray(np.rot90(tall)).save(photo, quality=98, exif=exif.tobytes())
    Image.fromarray(image[..., 1].astype(np.uint16) * 257).save(gray16)
    for path in (photo, gray16):
        by_path = predictor.predict(path, SHAPES)
        with Image.open(path) as opened:
            by_pil = predictor.predict(opened, SHAPES)
        assert by_pil.labels.shape == by_path.labels.shape
        np.testing.assert_allclose(by_pil.scores, by_path.scores, atol=1e-6)
    assert predictor.predict(photo, SHAPES).labels.shape == (64, 40)  # as the photo is shown
    # an image already turned (ImageOps.exif_transpose drops the tag) is not turned again
    with Image.open(photo) as opened:
        shown = ImageOps.exif_transpose(opened)
    assert predictor.predict(shown, SHAPES).labels.shape == (64, 40)
    with pytest.raises(OSError, match=r"Image 0 \(a PIL I image\) is I grayscale with values"):
        predictor.predict(Image.fromarray(np.full((4, 4), 70000, np.int32)), SHAPES)


def test_a_photo_larger_than_the_input_is_labelled_as_the_model_would(predictor):
    """A 192x192 photo (the toy model runs at 64x64): the model's output at the input size,
    resized a few classes at a time, labels what the model's own 192x192 output labels; the
    (K, H, W) scores are made only when asked for."""
    small, _ = _scene(5)
    image = np.asarray(Image.fromarray(small).resize((192, 192), Image.BILINEAR))
    inp = model_input(image, predictor.aug, SHAPES)
    assert tuple(inp["image"].shape[-2:]) == (64, 64)
    assert predictor.score_kind == "probabilities"  # the toy MaskCLIP's: no softmax on top
    with torch.no_grad():
        own = predictor.model([inp])[0]["sem_seg"]  # at 192x192
    best, second = own.topk(2, dim=0).values
    threshold = float(best.median())  # the background wins about half the pixels
    seen = []
    hook = predictor.model.register_forward_hook(
        lambda module, args, out: seen.append(tuple(out[0]["sem_seg"].shape))
    )
    try:
        pred = predictor.predict(image, SHAPES, background_threshold=threshold)
    finally:
        hook.remove()
    assert seen == [(len(SHAPES), 64, 64)]  # the model never made (K, 192, 192)
    assert pred.labels.shape == pred.confidence.shape == (192, 192)
    assert "scores" not in vars(pred)  # not made yet
    clear = ((best - second > 1e-6) & ((best - threshold).abs() > 1e-6)).numpy()
    assert clear.mean() > 0.9
    want = torch.where(best < threshold, 0, own.argmax(dim=0) + 1).numpy()
    np.testing.assert_array_equal(pred.labels[clear], want[clear])
    assert 0.2 < (pred.labels == 0).mean() < 0.8
    conf = np.where(best.numpy() < threshold, threshold, best.numpy())
    np.testing.assert_allclose(pred.confidence, conf, rtol=1e-5, atol=1e-6)
    assert pred.scores.shape == (len(SHAPES) + 1, 192, 192)
    np.testing.assert_allclose(pred.scores.max(axis=0), pred.confidence, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pred.scores.argmax(axis=0)[clear], want[clear])
    maps = pred.score_maps(["background", 3])  # a few heat maps without the others
    np.testing.assert_allclose(maps, pred.scores[[0, 3]], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="'zebra' is not one of this prediction's names"):
        pred.score_maps(["zebra"])


def test_a_thumbnail_smaller_than_the_input_keeps_scores_at_its_own_size(predictor):
    """The test resize enlarges a 32x40 thumbnail to the 64-px input: its scores at its own
    size are the smaller, so the model is asked for those (and a Prediction holds them)."""
    small, _ = _scene(6)
    image = np.ascontiguousarray(small[:32, :40])
    seen = []
    hook = predictor.model.register_forward_hook(
        lambda module, args, out: seen.append(tuple(out[0]["sem_seg"].shape))
    )
    try:
        pred = predictor.predict(image, SHAPES)
    finally:
        hook.remove()
    assert seen == [(len(SHAPES), 32, 40)]
    assert tuple(pred.model_scores.scores.shape) == (len(SHAPES), 32, 40)
    # a caller's edit of scores leaves the held scores, and later maps, as they were
    assert not np.shares_memory(pred.scores, pred.model_scores.scores.numpy())
    before = pred.score_maps([0])
    pred.scores[0] = 0
    np.testing.assert_array_equal(pred.score_maps([0]), before)


def test_score_maps_take_names_and_indices_like_scores(predictor):
    pred = predictor.predict(_scene(1)[0], SHAPES)
    np.testing.assert_allclose(pred.score_maps([-1, "circle"]), pred.scores[[-1, 0]], atol=1e-6)
    with pytest.raises(ValueError, match=r"a list of names or indices; for one, \['circle'\]"):
        pred.score_maps("circle")
    for bad in (True, 1.7):
        with pytest.raises(ValueError, match="neither a name nor an integer index"):
            pred.score_maps([bad])
    with pytest.raises(ValueError, match=r"class indices \[8\] are outside \[0, 8\)"):
        pred.score_maps([8])


def test_a_prediction_built_the_old_way_is_refused_clearly(predictor):
    pred = predictor.predict(_scene(1)[0], SHAPES)
    with pytest.raises(ValueError, match="confidence must be .H, W. like labels .64, 64."):
        ovseg.Prediction(pred.names, pred.labels, pred.scores, pred.masks)  # scores were third


def test_predictions_compare_by_identity_not_by_raising(predictor):
    pred = predictor.predict(_scene(1)[0], SHAPES)
    twin = copy.deepcopy(pred)
    assert pred == pred and pred != twin and len({pred, twin}) == 2
    np.testing.assert_array_equal(twin.labels, pred.labels)


def test_editing_labels_or_confidence_changes_no_later_map(predictor):
    """A common step, background -> ignore in place, emptied score_maps' background row:
    the labels shared memory with the scores held for the maps."""
    image = _scene(1)[0]
    threshold = float(np.median(predictor.predict(image, SHAPES).confidence))
    pred = predictor.predict(image, SHAPES, background_threshold=threshold)
    background = pred.labels == 0
    assert background.any()
    before = pred.score_maps(["background"])
    pred.labels[background] = 255
    pred.confidence[:] = 0
    np.testing.assert_array_equal(pred.score_maps(["background"]), before)
    assert not np.shares_memory(pred.labels, pred.model_scores.labels()[0].numpy())
