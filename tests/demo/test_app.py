"""demo/app.py: the request path on the toy MaskCLIP (no gradio needed), and the page in a
real headless Chromium (skipped without gradio, playwright or Chromium, unless
OVSEG_REQUIRE_EXTRAS=1, as .ci/run sets, turns the skip into a failure)."""

from __future__ import annotations

import importlib.util
import os
import re

import numpy as np
import pytest
from ovseg_testing import ROOT, load_script

from ovseg.data.datasets import toy_world as tw
from ovseg.data.image_io import read_image
from ovseg.utils.visualization import heatmap_grid

app_module = load_script("demo/app.py")
VOCABULARY = "background, circle, square, triangle, star, ring, cross, diamond, crescent"
NAMES = [n.strip() for n in VOCABULARY.split(",")]
SCALE = 5  # a 64x64 image is shown at a 320 short side


def _scene(index: int = 1) -> np.ndarray:
    return tw.render_scene(tw.sample_scene(tw.sample_rng(0, "validation", index)))[0]


def _legend_items(html_text: str):
    pattern = (
        r"data-name='([^']*)' data-color='#([0-9a-f]{6})'.*?"
        r"<span class='legend-share'>([0-9.]+)%</span>"
    )
    return [
        (name, tuple(int(c[i : i + 2], 16) for i in (0, 2, 4)), float(share))
        for name, c, share in re.findall(pattern, html_text)
    ]


@pytest.fixture(scope="module")
def toy_app():
    return app_module.SegmentApp([app_module.ModelChoice("toy", "toy/maskclip.yaml")], device="cpu")


def test_segment_paints_what_the_predictor_predicts(toy_app):
    image = _scene()
    overlay, label_map, heatmaps, legend = toy_app.segment(image, VOCABULARY, "toy")
    pred = toy_app.predictor("toy").predict(image, VOCABULARY)
    items = _legend_items(legend)
    assert sorted(n for n, _, _ in items) == sorted(NAMES)
    shares = {n: s for n, _, s in items}
    assert sum(shares.values()) == pytest.approx(100.0, abs=0.5)
    for k, name in enumerate(NAMES):
        assert shares[name] == pytest.approx(100 * (pred.labels == k).mean(), abs=0.051)
    # the label map is the predicted labels in the legend's colours, enlarged 5x
    colors = {n: c for n, c, _ in items}
    expected = np.array([colors[n] for n in NAMES], np.uint8)[pred.labels]
    np.testing.assert_array_equal(label_map, expected.repeat(SCALE, 0).repeat(SCALE, 1))
    # the overlay is the image, painted: same size as the label map, not the image itself
    assert overlay.shape == label_map.shape
    assert np.abs(overlay.astype(int) - image.repeat(SCALE, 0).repeat(SCALE, 1)).mean() > 10
    assert heatmaps.ndim == 3 and heatmaps.shape[2] == 3 and heatmaps.std() > 0
    # largest share first
    assert [s for _, _, s in items] == sorted((s for _, _, s in items), reverse=True)


def test_large_vocabularies_get_at_most_twelve_heat_maps(toy_app):
    image = _scene()
    _, _, heatmaps, legend = toy_app.segment(image, "voc20", "toy")
    assert len(_legend_items(legend)) == 20
    twelve, layout = heatmap_grid(image, np.zeros((12, 64, 64)), [f"n{i}" for i in range(12)])
    assert app_module.MAX_HEATMAPS == 12 and layout.rows * layout.cols >= 12
    assert heatmaps.shape == twelve.shape


def test_a_large_photo_is_shown_at_the_display_size(toy_app, monkeypatch):
    """Drawn at its full size, a 24-MP photo's overlay and heat maps took 3.1 GB: the page
    shows at most MAX_DISPLAY_SIDE, the legend's shares still from every pixel."""
    monkeypatch.setattr(app_module, "MAX_DISPLAY_SIDE", 100)
    monkeypatch.setattr(app_module, "MIN_DISPLAY_SIZE", 0)  # no enlargement of small images
    image = np.ascontiguousarray(np.tile(_scene(), (2, 3, 1)))  # 128 x 192
    overlay, label_map, heatmaps, legend = toy_app.segment(image, VOCABULARY, "toy")
    pred = toy_app.predictor("toy").predict(image, VOCABULARY)
    assert overlay.shape == label_map.shape == (67, 100, 3)
    rows = np.minimum(((np.arange(67) + 0.5) * 128 / 67).astype(int), 127)
    cols = np.minimum(((np.arange(100) + 0.5) * 192 / 100).astype(int), 191)
    colors = {n: c for n, c, _ in _legend_items(legend)}
    palette = np.array([colors[n] for n in NAMES], np.uint8)
    np.testing.assert_array_equal(label_map, palette[pred.labels[rows[:, None], cols[None, :]]])
    shares = {n: s for n, _, s in _legend_items(legend)}
    for k, name in enumerate(NAMES):
        assert shares[name] == pytest.approx(100 * (pred.labels == k).mean(), abs=0.051)
    assert pred.score_maps([0, 1], size=(67, 100)).shape == (2, 67, 100)
    np.testing.assert_array_equal(pred.score_maps([1], size=(128, 192)), pred.score_maps([1]))


def test_requests_larger_than_the_page_takes_are_refused(toy_app, monkeypatch):
    monkeypatch.setattr(app_module, "MAX_UPLOAD_PIXELS", 4000)
    with pytest.raises(ValueError, match=r"64x64 \(0 MP\); the web app takes up to 0 MP"):
        toy_app.segment(_scene(), VOCABULARY, "toy")
    monkeypatch.setattr(app_module, "MAX_TYPED_NAMES", 5)
    with pytest.raises(ValueError, match="9 class names typed; the web app takes up to 5"):
        toy_app.segment(_scene()[:32, :32].copy(), VOCABULARY, "toy")
    _, _, _, legend = toy_app.segment(_scene()[:32, :32].copy(), "voc20", "toy")  # builtin
    assert len(_legend_items(legend)) == 20


def test_bad_requests_say_what_to_do(toy_app):
    with pytest.raises(ValueError, match="upload an image"):
        toy_app.segment(None, VOCABULARY, "toy")
    with pytest.raises(ValueError, match="type a vocabulary"):
        toy_app.segment(_scene(), "  ", "toy")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        toy_app.segment(_scene(), VOCABULARY, "nope")
    with pytest.raises(ValueError, match="no models"):
        app_module.SegmentApp([])


def test_the_page_never_reads_a_file_of_the_server(toy_app, tmp_path, monkeypatch):
    """A .json path typed in the form is not a vocabulary file: it is refused, and what the
    file holds never reaches the answer (the API alone reads vocabulary files)."""
    secret = tmp_path / "secret.json"
    secret.write_text('["secretA", "secretB"]')
    monkeypatch.chdir(tmp_path)
    for typed in (str(secret), "secret.json"):
        with pytest.raises(ValueError, match="neither class names .* nor a builtin") as info:
            toy_app.segment(_scene(), typed, "toy")
        assert "secretA" not in str(info.value)
    _, _, _, legend = toy_app.segment(_scene(), "circle;", "toy")  # one class, as documented
    assert "circle" in legend


def test_grayscale_and_rgba_uploads_are_segmented(toy_app):
    image = _scene()
    gray = image.mean(axis=2).astype(np.uint8)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    for upload, as_rgb in ((gray, np.stack([gray] * 3, axis=-1)), (rgba, image)):
        _, label_map, _, _ = toy_app.segment(upload, VOCABULARY, "toy")
        _, expected, _, _ = toy_app.segment(as_rgb, VOCABULARY, "toy")
        np.testing.assert_array_equal(label_map, expected)


def test_uploads_are_read_as_the_demo_reads_their_files(toy_app, tmp_path):
    """What the page hands segment() for an upload is decoded as demo.py decodes the file:
    gradio's own RGB array made a 16-bit PNG white and a GIF palette indices (grey)."""
    pytest.importorskip("gradio")
    from gradio.data_classes import ImageData
    from PIL import Image

    image = _scene()
    tall = np.ascontiguousarray(image[:, :40])
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone photo stored turned
    paths = [tmp_path / n for n in ("gray16.png", "anim.gif", "photo.jpg", "scene.webp")]
    Image.fromarray(image[..., 0].astype(np.uint16) * 257).save(paths[0])
    frames = [Image.fromarray(image), Image.fromarray(255 - image)]
    frames[0].save(paths[1], save_all=True, append_images=frames[1:], duration=100)
    Image.fromarray(np.rot90(tall)).save(paths[2], quality=98, exif=exif.tobytes())
    Image.fromarray(image).save(paths[3], lossless=True)
    page = app_module.build_ui(toy_app)
    [upload] = [b for b in page.blocks.values() if getattr(b, "elem_id", "") == "input-image"]
    for path in paths:
        received = upload.preprocess(ImageData(path=str(path), orig_name=path.name))
        got = toy_app.segment(received, VOCABULARY, "toy")
        expected = toy_app.segment(read_image(path), VOCABULARY, "toy")
        for picture, want in zip(got[:2], expected[:2]):  # the overlay and the label map
            np.testing.assert_array_equal(picture, want, err_msg=path.name)
        if path.name == "photo.jpg":  # drawn as the photo is shown: taller than wide
            assert got[1].shape[0] > got[1].shape[1]
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(OSError, match="text.jpg"):
        toy_app.segment(str(tmp_path / "text.jpg"), VOCABULARY, "toy")


def test_a_bad_model_stops_the_app_before_serving(tmp_path, capsys):
    with pytest.raises(SystemExit):
        app_module.main(["--config-file", "toy/no_such.yaml"])
    assert "neither a file nor a path under" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        app_module.main(["--config-file", "toy/maskclip.yaml", "--weights", "nope.pth"])
    assert "--weights nope.pth: no such file" in capsys.readouterr().err
    if importlib.util.find_spec("gradio") is None:
        return
    typo = tmp_path / "typo.yaml"
    base = ROOT / "configs/toy/maskclip.yaml"
    typo.write_text(f"_BASE_: {base}\nMODEL:\n  OVSEG:\n    TEST_VOCABLARY: a\n")
    with pytest.raises(
        SystemExit, match=r"TEST_VOCABLARY \(set in .*\) is not a config key; did you"
    ):
        app_module.main(["--config-file", str(typo), "--runs"])
    # a file that is no checkpoint at all is named as such, in one line, not as a traceback
    notes = tmp_path / "notes.pth"
    notes.write_text("not a checkpoint")
    with pytest.raises(SystemExit, match=r"notes.pth is not a PyTorch checkpoint"):
        app_module.main(["--config-file", "toy/lseg_toyrn_400_bs8.yaml", "--weights", str(notes),
                         "--runs"])  # fmt: skip


def test_a_port_it_cannot_serve_on_is_refused_before_the_model(capsys):
    import socket

    with pytest.raises(SystemExit):
        app_module.main(["--port", "99999"])
    assert "argument --port: 99999 is not a port (1-65535)" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            app_module.main(["--port", str(port), "--config-file", "toy/maskclip.yaml"])
    assert info.value.code == 2  # argparse's, before any model is built
    assert f"cannot serve on 127.0.0.1:{port} (" in capsys.readouterr().err


def test_a_runs_folder_that_is_not_there_is_refused(tmp_path, capsys, monkeypatch):
    """A misspelt --runs used to leave the menu without the user's runs, silently."""

    def no_menu(*args, **kwargs):
        raise AssertionError("the app went on to make its menu and serve")

    monkeypatch.setattr(app_module, "default_choices", no_menu)
    (tmp_path / "output").mkdir()
    with pytest.raises(SystemExit) as info:
        app_module.main(["--runs", str(tmp_path / "output"), str(tmp_path / "ouput")])
    assert info.value.code == 2
    assert f"--runs {tmp_path / 'ouput'}: no such folder" in capsys.readouterr().err


def test_menu_lists_trained_runs(tmp_path):
    for run in ("output/toy/lseg", "output/demo/split_a/zegclip/teacher", "output/no_weights"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "config.yaml").write_text("MODEL: {}\n")
    for run in ("output/toy/lseg", "output/demo/split_a/zegclip/teacher"):
        (tmp_path / run / "model_final.pth").write_bytes(b"")
    runs = app_module.find_runs(tmp_path / "output")
    assert [r.weights for r in runs] == [
        str(tmp_path / "output/demo/split_a/zegclip/teacher/model_final.pth"),
        str(tmp_path / "output/toy/lseg/model_final.pth"),
    ]
    assert all(r.config.endswith("config.yaml") for r in runs)
    assert app_module.find_runs(tmp_path / "missing") == []
    choices = app_module.default_choices([tmp_path / "output"], "my.yaml", "w/model.pth")
    assert [c.label for c in choices[:2]] == ["my.yaml · model.pth", app_module.TOY_MASKCLIP]
    assert len(choices) == 4


# ---------------------------------------------------------------------------- browser
def _browser_or_skip() -> str:
    """The Chromium binary, or a skip (a failure under OVSEG_REQUIRE_EXTRAS=1) naming what
    is missing."""
    tool = load_script("tools/screenshot_app.py")
    missing = [m for m in ("gradio", "playwright") if importlib.util.find_spec(m) is None]
    problems = [f'{m} is not installed (pip install -e ".[app]")' for m in missing]
    chromium = tool.find_chromium()
    if chromium is None:
        problems.append("no Chromium on PATH (apt-get install chromium, or set OVSEG_CHROMIUM)")
    if problems:
        reason = "browser test needs: " + "; ".join(problems)
        if os.environ.get("OVSEG_REQUIRE_EXTRAS") == "1":
            pytest.fail(reason + " (OVSEG_REQUIRE_EXTRAS=1)")
        pytest.skip(reason)
    return chromium


def test_screenshot_mistakes_are_refused_before_the_browser(tmp_path, capsys):
    tool = load_script("tools/screenshot_app.py")
    (tmp_path / "a_file").write_text("")
    for argv, says in [
        (["--output", str(tmp_path / "a_file" / "x.png")], "no file can be written there"),
        (["--output", str(tmp_path)], "give a .png file name"),
        (["--image", str(tmp_path / "none.png")], "is not a file"),
        (["--scene", "-1"], "--scene -1: give a toy-world validation scene index >= 0"),
        (["--chromium", str(tmp_path / "nochrome")], "no such executable"),
    ]:
        with pytest.raises(SystemExit) as info:
            tool.main(argv)
        assert info.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.slow
def test_app_in_headless_chromium(tmp_path, toy_app):
    """Start the app on localhost, upload a scene, submit a vocabulary, read the page."""
    chromium = _browser_or_skip()
    tool = load_script("tools/screenshot_app.py")
    image_path = tool.toy_scene_png(tmp_path, index=1)
    # "--runs" with an empty folder: the menu holds the toy MaskCLIP only
    (tmp_path / "runs").mkdir()
    with tool.running_app(["--runs", str(tmp_path / "runs")], log_dir=tmp_path) as url:
        with tool.browser_page(chromium) as page:
            shown = tool.segment_in_browser(page, url, image_path, VOCABULARY)
            assert "ovseg" in page.title()
    legend = shown["legend"]
    assert sorted(x["name"] for x in legend) == sorted(NAMES)
    assert all(re.fullmatch(r"[0-9.]+%", x["share"]) for x in legend)
    colors = {x["name"]: x["color"] for x in legend}
    # what the browser shows is what the model predicts, in the legend's colours
    pred = toy_app.predictor("toy").predict(_scene(1), VOCABULARY)
    expected = np.array([colors[n] for n in NAMES], np.uint8)[pred.labels]
    np.testing.assert_array_equal(shown["label_map"], expected.repeat(SCALE, 0).repeat(SCALE, 1))
    present = {colors[NAMES[k]] for k in np.unique(pred.labels)}
    assert {tuple(c) for c in shown["label_map"].reshape(-1, 3)} == present
    image = _scene(1).repeat(SCALE, 0).repeat(SCALE, 1)
    assert shown["overlay"].shape == image.shape
    assert np.abs(shown["overlay"].astype(int) - image).mean() > 10
    assert shown["heatmaps"].std() > 0
