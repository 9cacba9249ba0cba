"""Drive the web app (demo/app.py) in headless Chromium: start it, upload an image, submit a
vocabulary, read back what it painted, and optionally save a screenshot of the page.

    python tools/screenshot_app.py --output output/app.png   # the toy MaskCLIP alone
    # the README's screenshot: ZegCLIP as `make demo` trains it (runs in output/demo)
    python tools/screenshot_app.py --output docs/images/app_toy_zegclip.png --scene 2 \\
        --model output/demo/split_a/zegclip/teacher --app-args --runs output/demo

Needs the app extra (``pip install -e ".[app]"``: gradio, playwright) and a system Chromium
(Debian: ``apt-get install chromium``; ``--chromium`` or $OVSEG_CHROMIUM name another
binary). Playwright drives that binary; it downloads no browser. ``tests/demo/test_app.py``
drives the app through these functions.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT_S = 180  # importing torch, detectron2 and gradio on a busy 2-core machine
SEGMENT_TIMEOUT_S = 180  # the first request also builds the model


def find_chromium(explicit: Optional[str] = None) -> Optional[str]:
    """The Chromium binary: ``explicit``, $OVSEG_CHROMIUM, else the first on PATH."""
    for name in (explicit, os.environ.get("OVSEG_CHROMIUM"), *CHROMIUM_NAMES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"demo/app.py exited with {proc.returncode} before serving:\n"
                f"{log_path.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(
        f"demo/app.py did not serve {url} within {timeout:.0f} s:\n{log_path.read_text()[-4000:]}"
    )


@contextlib.contextmanager
def running_app(
    args: Sequence[str] = (), env: Optional[Dict[str, str]] = None, log_dir: Optional[Path] = None
) -> Iterator[str]:
    """``python demo/app.py --port <free> <args>`` on localhost for the ``with`` block;
    yields its URL, stops it (by its pid) after."""
    port = free_port()
    env = dict(os.environ if env is None else env)
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="ovseg_app_log_"))
    log_path = log_dir / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "demo/app.py"), "--host", "127.0.0.1",
             "--port", str(port), *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, proc, log_path, START_TIMEOUT_S)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _image_of(page, selector: str, base_url: str) -> np.ndarray:
    """The picture an ``<img>`` under ``selector`` shows, as (H, W, 3) uint8 RGB."""
    src = page.locator(f"{selector} img").first.get_attribute("src")
    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        url = src if src.startswith("http") else base_url.rstrip("/") + "/" + src.lstrip("/")
        data = page.request.get(url).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def segment_in_browser(
    page, url: str, image_path: str, vocabulary: str, model: Optional[str] = None
) -> Dict:
    """Open the app, upload ``image_path``, type ``vocabulary``, (choose ``model``), press
    Segment and wait for the legend.

    Returns:
        dict: "overlay", "label_map", "heatmaps" (H, W, 3) uint8 arrays as shown, and
        "legend": [{"name", "color" (r, g, b), "share" text}] in the legend's order.
    """
    page.goto(url)
    page.locator("#input-image input[type=file]").set_input_files(image_path)
    page.locator("#input-image img").first.wait_for(timeout=30_000)
    box = page.locator("#vocabulary textarea, #vocabulary input").first
    box.fill(vocabulary)
    if model is not None:
        page.locator("#model input").first.fill(model)
        page.keyboard.press("Enter")
    page.locator("#segment-button").click()
    page.locator("#legend .legend-item").first.wait_for(timeout=SEGMENT_TIMEOUT_S * 1000)
    page.locator("#heatmaps img").first.wait_for(timeout=30_000)
    legend = []
    for item in page.locator("#legend .legend-item").all():
        color = item.get_attribute("data-color")
        legend.append(
            {
                "name": item.locator(".legend-name").inner_text(),
                "color": tuple(int(color[i : i + 2], 16) for i in (1, 3, 5)),
                "share": item.locator(".legend-share").inner_text(),
            }
        )
    return {
        "overlay": _image_of(page, "#overlay", url),
        "label_map": _image_of(page, "#label-map", url),
        "heatmaps": _image_of(page, "#heatmaps", url),
        "legend": legend,
    }


@contextlib.contextmanager
def browser_page(chromium: str, width: int = 1400, height: int = 900):
    """A headless Chromium page (playwright over the system binary)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def toy_scene_png(folder: Path, index: int = 1) -> str:
    """A toy-world validation scene written as a PNG (a readable input for the app)."""
    from ovseg.data.datasets import toy_world as tw

    image, _ = tw.render_scene(tw.sample_scene(tw.sample_rng(0, "validation", index)))
    path = Path(folder) / f"toy_scene_{index}.png"
    Image.fromarray(image).save(path)
    return str(path)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # its first sentence
    p.add_argument("--output", default="output/app.png", help="the screenshot (PNG)")
    p.add_argument("--image", help="image to upload (default: a toy-world scene)")
    p.add_argument("--scene", type=int, default=1, help="that toy-world validation scene")
    p.add_argument("--vocabulary", default="background, circle, square, triangle, star, "
                   "ring, cross, diamond, crescent")  # fmt: skip
    p.add_argument("--model", help="menu entry to choose (default: the first)")
    p.add_argument("--chromium", help="Chromium binary (default: $OVSEG_CHROMIUM or PATH)")
    p.add_argument("--app-args", nargs=argparse.REMAINDER, default=[], help="for demo/app.py")
    args = p.parse_args(argv)
    # what would fail after the browser session is refused before it
    if args.chromium and not shutil.which(args.chromium):
        p.error(f"--chromium {args.chromium}: no such executable")
    if args.image and not Path(args.image).is_file():
        p.error(f"--image {args.image} is not a file")
    if args.scene < 0:
        p.error(f"--scene {args.scene}: give a toy-world validation scene index >= 0")
    if not args.output.lower().endswith(".png"):
        p.error(f"--output {args.output}: give a .png file name")
    folder = Path(args.output).resolve().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or os.path.isdir(args.output):
        p.error(f"--output {args.output}: no file can be written there; give a .png path")
    chromium = find_chromium(args.chromium)
    if chromium is None:
        p.error("no Chromium found: apt-get install chromium, or pass --chromium PATH")
    with tempfile.TemporaryDirectory() as tmp:
        image = args.image or toy_scene_png(Path(tmp), args.scene)
        # by default the toy MaskCLIP alone ("--runs" with no folder): the same page anywhere
        app_args = args.app_args or ["--runs"]
        with running_app(app_args, log_dir=Path(tmp)) as url, browser_page(chromium) as page:
            result = segment_in_browser(page, url, image, args.vocabulary, args.model)
            shot = page.screenshot(full_page=True)
    # a 256-colour palette PNG: a third of the size, no visible change on a web page
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(shot)).convert("RGB").quantize(256).save(args.output, optimize=True)
    names = ", ".join(f"{x['name']} {x['share']}" for x in result["legend"])
    print(f"Wrote {args.output}; legend: {names}")


if __name__ == "__main__":
    main()
