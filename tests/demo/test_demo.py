"""demo/demo.py and demo/predictor.py on a tiny random CLIP: files, labels, heat maps, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import open_clip.pretrained
import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import (
    DEMO_DIR,
    MASKCLIP_CONFIG,
    load_demo_modules,
    subprocess_env,
    tiny_maskclip_cfg,
    tiny_maskclip_opts,
    write_two_region_image,
)
from PIL import Image

from ovseg.modeling.meta_arch.maskclip import cosine_logits
from ovseg.utils.visualization import heatmap_grid, label_dtype_for

predictor_module, demo_cli = load_demo_modules()
CONFIG = str(MASKCLIP_CONFIG)
NAMES = ["cat", "dog", "grass"]


@pytest.fixture(scope="module")
def shared_predictor(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_maskclip_cfg(tmp_path_factory.mktemp("clip_cache"))
    return predictor_module.OpenVocabPredictor(cfg)


def _demo(predictor, **kwargs):
    return predictor_module.VisualizationDemo(predictor.cfg, predictor=predictor, **kwargs)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- the script, end to end
def test_script_writes_outputs_and_skips_an_unreadable_image(tmp_path):
    good = write_two_region_image(tmp_path / "in" / "street.png")
    bad = tmp_path / "in" / "broken.jpg"
    bad.write_text("not an image")
    out = tmp_path / "out"
    cmd = [sys.executable, str(DEMO_DIR / "demo.py"), "--config-file", CONFIG]
    cmd += ["--input", str(good), str(bad), "--output", str(out)]
    cmd += ["--custom-vocabulary", "cat,dog,grass", "--heatmaps", "--confidence-threshold", "0.4"]
    cmd += ["--opts", *tiny_maskclip_opts(tmp_path / "cache")]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log  # one input failed, the other was processed
    assert "Skipping" in log and "broken.jpg" in log, log
    assert sorted(p.name for p in out.iterdir()) == [
        "street_heatmaps.png",
        "street_label.png",
        "street_overlay.png",
    ]
    label = np.asarray(Image.open(out / "street_label.png"))
    assert label.shape == (48, 64) and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 255}
    # short side 48 enlarged to >= 320 by an integer factor: 7
    assert Image.open(out / "street_overlay.png").size == (64 * 7, 48 * 7)
    # one row of three 240-px panels of height 240 * 48 / 64 = 180, +28 title, +80 colour bar
    assert Image.open(out / "street_heatmaps.png").size == (3 * 240, 180 + 28 + 80)


# ---------------------------------------------------------------- predictor and drawing
def test_labels_are_the_argmax_where_confident(shared_predictor):
    image = _rgb(40, 56)
    scores = shared_predictor(image, NAMES)["sem_seg"]
    assert scores.shape == (3, 40, 56)
    # the shipped MaskCLIP config upsamples logits (MODEL.MASKCLIP.UPSAMPLE_LOGITS): the
    # confidence is the largest softmax probability
    assert shared_predictor.score_kind == "logits"
    confidence, argmax = scores.softmax(dim=0).max(dim=0)
    confidence = confidence.clamp(0, 1)
    threshold = float(confidence.median())
    predictions, overlay = _demo(shared_predictor, confidence_threshold=threshold).run_on_image(
        image, NAMES
    )
    label = predictions["label"]
    low = (confidence < threshold).numpy()
    assert label.dtype == np.uint8 and low.any() and (~low).any()
    assert (label[low] == 255).all()
    assert np.array_equal(label[~low], argmax.numpy()[~low])
    np.testing.assert_allclose(predictions["confidence"], confidence.numpy(), atol=1e-6)
    # 40 px short side -> scale ceil(320 / 40) = 8
    assert overlay.get_image().shape == (40 * 8, 56 * 8, 3)


def test_a_large_photo_is_labelled_from_scores_at_the_input_size(tmp_path):
    """The model scores the resized input; the labels at the photo's size are its own
    full-size output's, taken without holding (K, H, W)."""
    torch.manual_seed(0)
    cfg = tiny_maskclip_cfg(tmp_path / "clip_cache")
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 32, 64
    predictor = predictor_module.OpenVocabPredictor(cfg)
    image = np.asarray(Image.fromarray(_rgb(12, 16)).resize((160, 120), Image.BILINEAR))
    own = predictor(image, NAMES)["sem_seg"].softmax(dim=0)  # the model at (120, 160): logits
    best, second = own.topk(2, dim=0).values
    threshold = float(best.median())
    predictions, _ = _demo(predictor, confidence_threshold=threshold).run_on_image(image, NAMES)
    assert predictions["sem_seg"].shape == (3, 32, 43)  # the input: short side 32
    label = predictions["label"]
    assert label.shape == (120, 160)
    clear = ((best - second > 1e-6) & ((best - threshold).abs() > 1e-6)).numpy()
    assert clear.mean() > 0.9
    want = np.where(best.numpy() < threshold, 255, own.argmax(dim=0).numpy())
    np.testing.assert_array_equal(label[clear], want[clear])
    assert 0.2 < (label == 255).mean() < 0.8
    np.testing.assert_allclose(predictions["confidence"], best.numpy(), rtol=1e-5, atol=1e-6)


def test_vocabularies_over_255_names_get_uint16_labels(shared_predictor):
    assert label_dtype_for(255) == (np.uint8, 255)
    assert label_dtype_for(256) == (np.uint16, 65535)
    names = [f"thing {i}" for i in range(300)]
    predictions, _ = _demo(shared_predictor).run_on_image(_rgb(32, 32), names)
    # the input (short side 64) is larger than the image: the scores at the image's size
    assert predictions["sem_seg"].shape == (300, 32, 32)
    assert predictions["label"].shape == (32, 32)
    assert predictions["label"].dtype == np.uint16
    assert predictions["label"].max() < 300  # threshold 0: every pixel labelled


def test_similarity_maps_are_teacher_cosines_upsampled(shared_predictor):
    image = _rgb(64, 64, seed=1)  # 64 = MIN_SIZE_TEST: no resize, a 4x4 grid of 16-px cells
    maps = shared_predictor.similarity_maps(image, NAMES)
    teacher = shared_predictor.teacher
    x = torch.as_tensor(image.transpose(2, 0, 1).copy())[None].float()
    cos = cosine_logits(
        teacher.dense_embeddings(x), teacher.encode_text(NAMES, ["a photo of a {}."])
    )
    assert cos.shape == (1, 3, 4, 4)
    expected = F.interpolate(cos, size=(64, 64), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-5)


def test_heat_maps_of_a_large_photo_are_made_at_the_display_size(shared_predictor):
    image = _rgb(64, 64, seed=1)
    full = shared_predictor.similarity_maps(image, NAMES)
    small = shared_predictor.similarity_maps(image, NAMES, size=(32, 48))
    expected = F.interpolate(torch.from_numpy(full)[None], size=(32, 48), mode="bilinear")[0]
    np.testing.assert_allclose(small, expected.numpy(), atol=1e-5)
    calls = []
    original = shared_predictor.similarity_maps
    shared_predictor.similarity_maps = lambda *a, **k: calls.append(k) or original(*a, **k)
    try:
        picture, layout = _demo(shared_predictor).heatmaps(_rgb(1500, 2000), NAMES)
    finally:
        del shared_predictor.similarity_maps
    assert calls == [{"size": (720, 960)}]  # long side HEATMAP_MAX_SIDE, not (1500, 2000)
    assert predictor_module.HEATMAP_MAX_SIDE == 960
    assert picture.shape == (180 + 28 + 80, 3 * 240, 3)


def test_a_large_maps_grid_keeps_the_full_maps_titles_and_scale():
    """Maps far larger than a panel are coloured at twice the panel's size; a one-pixel peak
    still names its panel's maximum and tops the colour scale."""
    maps = np.zeros((3, 1200, 1600), np.float32)
    maps[1, 600, 800] = 0.75
    picture, layout = heatmap_grid(_rgb(1200, 1600), maps, NAMES)
    assert layout.titles[1] == "dog (max 0.75)"
    assert layout.value_range == (0.0, 0.75)
    assert picture.shape == (180 + 28 + 80, 3 * 240, 3)


def test_a_tall_strips_heat_map_panels_stop_at_four_widths():
    maps = np.zeros((3, 3000, 5), np.float32)  # its aspect would make 144000-px panels
    picture, layout = heatmap_grid(_rgb(3000, 5), maps, NAMES)
    assert picture.shape == (960 + 28 + 80, 3 * 240, 3)


@pytest.mark.parametrize(("num_names", "rows", "cols"), [(3, 1, 3), (5, 2, 4), (9, 3, 3)])
def test_heatmap_grid_has_one_panel_per_word(num_names, rows, cols):
    names = NAMES + [f"word {i}" for i in range(num_names - 3)]
    maps = np.random.default_rng(0).uniform(-0.5, 0.5, (num_names, 24, 32)).astype(np.float32)
    maps[1, 0, 0] = 0.75
    picture, layout = heatmap_grid(_rgb(24, 32), maps, names)
    assert len(layout.titles) == num_names
    assert [t.split(" (max")[0] for t in layout.titles] == names
    assert layout.titles[1] == "dog (max 0.75)"
    assert (layout.rows, layout.cols) == (rows, cols)
    assert layout.value_range == (float(maps.min()), 0.75)  # one scale for every panel
    # panels 240 x 180 (the image's 3:4), 28-px titles, an 80-px colour bar
    assert picture.shape == (rows * (180 + 28) + 80, cols * 240, 3)
    assert layout.size == (cols * 240, rows * (180 + 28) + 80)


def test_demo_heatmaps_draw_every_vocabulary_word(shared_predictor):
    picture, layout = _demo(shared_predictor).heatmaps(_rgb(48, 64), NAMES)
    assert [t.split(" (max")[0] for t in layout.titles] == NAMES
    assert picture.shape == (180 + 28 + 80, 3 * 240, 3)


# ---------------------------------------------------------------- command-line errors
def _run(argv, capsys):
    code = demo_cli.main(argv)
    return code, capsys.readouterr().err


def _argv(tmp_path, *extra, output=None, opts=True):
    image = write_two_region_image(tmp_path / "in" / "a.png")
    argv = ["--config-file", CONFIG, "--input", str(image)]
    argv += ["--output", str(output or tmp_path / "out"), *extra]
    return argv + (["--opts", *tiny_maskclip_opts(tmp_path / "cache")] if opts else [])


def test_duplicated_vocabulary_is_refused(tmp_path, capsys):
    code, err = _run(_argv(tmp_path, "--custom-vocabulary", "cat,dog, Cat"), capsys)
    assert code == 2
    assert "Duplicate class names" in err and "'cat' at positions [0, 2]" in err
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_empty_vocabulary_item_is_refused(tmp_path, capsys):
    code, err = _run(_argv(tmp_path, "--custom_vocabulary", "cat,,dog"), capsys)
    assert code == 2 and "Item 1" in err and "is empty" in err


def test_unknown_builtin_vocabulary_lists_the_builtins(tmp_path, capsys):
    code, err = _run(_argv(tmp_path, "--vocabulary", "ade151"), capsys)
    assert code == 2 and "'ade151'" in err and "ade150" in err and "voc20" in err


def test_vocabulary_flag_sends_class_names_to_custom_vocabulary(tmp_path, capsys):
    """--vocabulary takes a builtin or a .json file: a misspelt builtin is not told to be
    written as a one-class list ('ade15;', which --vocabulary then read as names)."""
    code, err = _run(_argv(tmp_path, "--vocabulary", "ade15"), capsys)
    assert code == 2 and "(did you mean 'ade150'?)" in err, err
    assert "Class names go to --custom-vocabulary" in err and "'ade15;'" not in err, err
    code, err = _run(_argv(tmp_path, "--vocabulary", "sky;"), capsys)
    assert code == 2 and "use --custom-vocabulary for those" in err, err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_reported_before_the_model_is_built(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = _run(_argv(tmp_path, output=blocker / "out"), capsys)
    assert code == 2 and "cannot write into" in err and str(blocker) in err


def test_output_file_needs_a_single_input(tmp_path, capsys):
    second = write_two_region_image(tmp_path / "in" / "b.png")
    argv = _argv(tmp_path, output=tmp_path / "pic.png")
    argv[argv.index("--input") + 1 : argv.index("--input") + 1] = [str(second)]
    code, err = _run(argv, capsys)
    assert code == 2 and "names a file, but 2 inputs" in err


def test_offline_weights_error_names_the_download(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    # the shipped config as is (ViT-B-16, openai weights) with an empty weights cache
    argv = _argv(tmp_path, opts=False)
    argv += ["--opts", "MODEL.CLIP.CACHE_DIR", str(tmp_path / "empty_cache")]
    code, err = _run(argv, capsys)
    assert code == 2
    assert "could not build the model" in err and "network unreachable" in err
    assert "MODEL.CLIP.PRETRAINED" in err  # the hint: where to put a downloaded file


# ---------------------------------------------------------------- inputs and outputs
def test_an_output_file_of_another_image_format_is_refused(tmp_path, capsys):
    # out.webp was made a folder named out.webp holding <stem>_overlay.png
    argv = _argv(tmp_path, "--custom-vocabulary", "cat,dog", output=tmp_path / "out.webp")
    code, err = _run(argv, capsys)
    assert code == 2 and "names an image file the demo does not write" in err
    assert ".png/.jpg/.jpeg, or give a folder" in err and not (tmp_path / "out.webp").exists()


def test_single_input_may_name_the_output_file(tmp_path, capsys):
    code, err = _run(
        _argv(tmp_path, "--custom-vocabulary", "sky", output=tmp_path / "p.jpg"), capsys
    )
    assert code == 0, err
    assert Image.open(tmp_path / "p.jpg").format == "JPEG"
    label = np.asarray(Image.open(tmp_path / "p_label.png"))
    assert label.shape == (48, 64) and set(np.unique(label).tolist()) == {0}


def test_outputs_never_overwrite_inputs(tmp_path, capsys):
    image = tmp_path / "in" / "a.png"
    vocab = ["--custom-vocabulary", "cat,dog"]
    code, err = _run(_argv(tmp_path, *vocab, output=image), capsys)
    assert code == 2 and f"--output would write {image}, which is an input" in err
    before = image.read_bytes()
    # a folder that is both: the first run writes beside the inputs, a second would write
    # over the first's outputs, now listed as inputs
    folder = str(tmp_path / "in")
    argv = _argv(tmp_path, *vocab, output=folder)
    argv[argv.index("--input") + 1] = folder
    assert _run(argv, capsys)[0] == 0
    assert (tmp_path / "in" / "a_overlay.png").is_file() and image.read_bytes() == before
    code, err = _run(argv, capsys)
    assert code == 2 and "a_overlay.png, which is an input" in err


def test_a_thin_strip_is_drawn_and_a_failing_image_is_skipped(tmp_path, monkeypatch):
    strip = tmp_path / "in" / "strip.png"
    strip.parent.mkdir(parents=True)
    Image.fromarray(_rgb(3, 500)).save(strip)  # the test resize rounded its height to 0
    argv = _argv(tmp_path, "--custom-vocabulary", "cat,dog")
    argv[argv.index("--input") + 1 : argv.index("--input") + 1] = [str(strip)]
    assert demo_cli.main(argv) == 0
    names = ["a_label.png", "a_overlay.png", "strip_label.png", "strip_overlay.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    assert np.asarray(Image.open(tmp_path / "out" / "strip_label.png")).shape == (3, 500)

    # one image failing in the model: reported and skipped, the others still processed
    write_one = demo_cli._write_one

    def fails_on_the_strip(demo, args, image, *rest):
        if image.shape[0] == 3:
            raise RuntimeError("the model cannot take this one")
        return write_one(demo, args, image, *rest)

    monkeypatch.setattr(demo_cli, "_write_one", fails_on_the_strip)
    argv[argv.index("--output") + 1] = str(tmp_path / "out2")
    assert demo_cli.main(argv) == 1
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == names[:2]


def test_inputs_expand_folders_and_globs_once(tmp_path):
    a = write_two_region_image(tmp_path / "x" / "a.png")
    b = write_two_region_image(tmp_path / "x" / "b.jpg")
    (tmp_path / "x" / "notes.txt").write_text("")
    c = write_two_region_image(tmp_path / "y" / "a.png")
    patterns = [str(tmp_path / "x"), str(tmp_path / "*" / "a.png"), str(tmp_path / "nope.png")]
    paths, problems = demo_cli.expand_inputs(patterns)
    assert paths == [str(a), str(b), str(c)]
    assert problems == [(str(tmp_path / "nope.png"), "no such file or folder")]
    # two inputs named a.png: their outputs carry the folder name
    assert demo_cli._stems(paths) == ["x_a", "b", "y_a"]


def test_heatmaps_need_a_teacher(shared_predictor, monkeypatch):
    monkeypatch.setattr(shared_predictor, "teacher", None)  # e.g. the supervised baseline
    with pytest.raises(ValueError, match="Heat maps need a CLIP teacher, and MaskCLIP"):
        shared_predictor.similarity_maps(_rgb(32, 32), NAMES)
