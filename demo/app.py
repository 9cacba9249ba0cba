"""A web app: upload an image, type a vocabulary, see what an ovseg model makes of it.

Runs on a CPU out of the box with the toy models: MaskCLIP over the shipped toy CLIP
(``configs/toy/maskclip.yaml``, training-free), plus every trained run found under
``output/`` (a folder with ``config.yaml`` and ``model_final.pth``, as ``train_net.py`` and
``make demo`` leave them)::

    pip install -e ".[app]"
    python demo/app.py                      # http://127.0.0.1:7860
    python demo/app.py --config-file configs/ade20k/maskclip/maskclip_vitb16_bs1.yaml
    python demo/app.py --config-file my.yaml --weights model_final.pth --port 8000

Per request it shows the labelled overlay, the label map in the legend's colours, one heat
map per word (the model's class probabilities) and the legend (each name's colour and share
of the pixels). Inference is :class:`ovseg.Predictor`'s; this file only draws.
"""

from __future__ import annotations

import argparse
import atexit
import html
import logging
import os
import pickle
import shutil
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ovseg.api import Prediction, Predictor, resolve_config_path
from ovseg.data.datasets import toy_world
from ovseg.data.image_io import pil_to_numpy, read_image
from ovseg.utils.visualization import (
    draw_semantic,
    heatmap_grid,
    label_dtype_for,
    overlay_scale,
    vocabulary_metadata,
)
from ovseg.vocab import Vocabulary, builtin_vocabulary_names

__all__ = ["ModelChoice", "SegmentApp", "build_ui", "find_runs", "legend_html", "main"]

logger = logging.getLogger("ovseg.app")

TOY_MASKCLIP = "MaskCLIP · toy CLIP (training-free)"
DEFAULT_VOCABULARY = ", ".join(toy_world.CLASSES)
# the overlay and label map are enlarged (integer factor) to this short side, so a 64x64
# toy image is readable in the browser
MIN_DISPLAY_SIZE = 320
# heat maps are drawn for at most this many words, those labelling the most pixels (a
# 150-name vocabulary would otherwise give a 150-panel picture)
MAX_HEATMAPS = 12
# a photo is shown at most this long (the browser shows less): drawn at its full size, a
# 24-MP photo's overlay and heat maps took 3.1 GB and most of the request's time
MAX_DISPLAY_SIDE = 2048
# what one request may ask: larger photos and vocabularies go through the Python API
MAX_UPLOAD_PIXELS = 64_000_000
MAX_TYPED_NAMES = 1000
# how deep under a runs folder a run (config.yaml + model_final.pth) is looked for:
# output/demo/split_a/lseg/teacher is 4 levels below output/
RUN_SEARCH_DEPTH = 5
# the checkout this app is in: its output/ holds the runs train_net.py and make demo leave
# (an ovseg installed from a wheel has its configs inside site-packages, not beside this file)
CHECKOUT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model menu: a label, a config and optional weights."""

    label: str
    config: str
    weights: Optional[str] = None


def find_runs(folder: Path, max_depth: int = RUN_SEARCH_DEPTH) -> List[ModelChoice]:
    """Trained runs under ``folder``: each directory holding both ``config.yaml`` (the
    config detectron2 dumps into OUTPUT_DIR) and ``model_final.pth``, in path order."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    runs = []
    base_depth = len(folder.parts)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if len(Path(dirpath).parts) - base_depth >= max_depth:
            dirnames.clear()
        if "config.yaml" in filenames and "model_final.pth" in filenames:
            run = Path(dirpath)
            try:
                label = str(run.relative_to(CHECKOUT))
            except ValueError:
                label = str(run)
            runs.append(ModelChoice(label, str(run / "config.yaml"), str(run / "model_final.pth")))
    return runs


def default_choices(
    runs_folders: Sequence[Path] = (CHECKOUT / "output",),
    config_file: Optional[str] = None,
    weights: Optional[str] = None,
) -> List[ModelChoice]:
    """The menu: ``config_file`` first when given, the toy MaskCLIP, then the trained runs."""
    choices = []
    if config_file:
        label = Path(config_file).name + (f" · {Path(weights).name}" if weights else "")
        choices.append(ModelChoice(label, config_file, weights))
    choices.append(ModelChoice(TOY_MASKCLIP, "toy/maskclip.yaml"))
    for folder in runs_folders:
        choices.extend(find_runs(folder))
    return choices


def legend_html(names: Sequence[str], colors: Sequence[Sequence[int]], shares: np.ndarray) -> str:
    """An HTML legend: per name its colour swatch and share of the pixels, largest first;
    names that label no pixel follow, greyed. Each item carries ``data-name`` and
    ``data-color`` (``#rrggbb``) for scripts and tests."""
    order = sorted(range(len(names)), key=lambda k: (-float(shares[k]), k))
    items = []
    for k in order:
        hex_color = "#{:02x}{:02x}{:02x}".format(*(int(c) for c in colors[k]))
        present = shares[k] > 0
        style = "" if present else " style='opacity:0.45'"
        items.append(
            f"<li class='legend-item' data-name='{html.escape(names[k], quote=True)}' "
            f"data-color='{hex_color}'{style}>"
            f"<span class='legend-swatch' style='background:{hex_color}'></span>"
            f"<span class='legend-name'>{html.escape(names[k])}</span> "
            f"<span class='legend-share'>{100 * float(shares[k]):.1f}%</span></li>"
        )
    return f"<ul class='legend'>{''.join(items)}</ul>"


class SegmentApp:
    """The app without its page: predictors built on first use (one per model), and one
    request turned into the pictures the page shows."""

    def __init__(self, choices: Sequence[ModelChoice], device: Optional[str] = None):
        if not choices:
            raise ValueError("no models to offer: give at least one ModelChoice")
        self.choices: Dict[str, ModelChoice] = {c.label: c for c in choices}
        self.device = device
        self._predictors: Dict[str, Predictor] = {}
        self._lock = threading.Lock()

    def predictor(self, label: str) -> Predictor:
        """The (cached) predictor of the menu entry ``label``."""
        if label not in self.choices:
            raise ValueError(f"unknown model {label!r}; choose one of {sorted(self.choices)}")
        with self._lock:
            if label not in self._predictors:
                choice = self.choices[label]
                logger.info("Loading %s (%s, weights %s)", label, choice.config, choice.weights)
                self._predictors[label] = Predictor(
                    choice.config, choice.weights, device=self.device
                )
            return self._predictors[label]

    def segment(
        self, image: Any, vocabulary: str, label: str
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """One request.

        Args:
            image: the uploaded file (the page passes its path: it is decoded as the demo and
                training read files, EXIF orientation and 16-bit scaling included), a PIL
                image, an (H, W, 3) / (H, W) / (H, W, 4) uint8 array, or None when nothing
                was uploaded.
            vocabulary: what :meth:`ovseg.Predictor.predict` accepts as a string (class
                names, a builtin vocabulary name).
            label: a menu entry.

        Returns:
            tuple: (overlay, label map, heat maps) as uint8 RGB pictures and the legend HTML.
        """
        if image is None:
            raise ValueError("upload an image first")
        if not vocabulary or not vocabulary.strip():
            raise ValueError("type a vocabulary: class names separated by commas")
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image, format="RGB")
        elif not isinstance(image, np.ndarray) and hasattr(image, "convert"):  # a PIL image
            image = pil_to_numpy(image, "RGB", "the uploaded image")
        image = np.asarray(image)
        if image.ndim == 2:  # grayscale: the predictor takes three channels
            image = np.stack([image] * 3, axis=-1)
        image = np.ascontiguousarray(image[..., :3])  # drop an alpha channel
        h, w = image.shape[:2]
        if h * w > MAX_UPLOAD_PIXELS:
            raise ValueError(
                f"the image is {w}x{h} ({h * w / 1e6:.0f} MP); the web app takes up to "
                f"{MAX_UPLOAD_PIXELS / 1e6:.0f} MP: downscale it, or use ovseg.Predictor"
            )
        pred = self.predictor(label).predict(image, typed_vocabulary(vocabulary))
        return render_prediction(image, pred)


def typed_vocabulary(spec: str) -> Vocabulary:
    """The vocabulary typed in the page: class names or a builtin vocabulary's name, never a
    file (``ovseg.Predictor`` reads a .json path, which from a web form would read files of
    the server)."""
    spec = spec.strip()
    if spec in builtin_vocabulary_names():
        return Vocabulary.builtin(spec)
    if "," in spec or ";" in spec:
        vocabulary = Vocabulary.from_string(spec)
        if len(vocabulary.names) > MAX_TYPED_NAMES:
            raise ValueError(
                f"{len(vocabulary.names)} class names typed; the web app takes up to "
                f"{MAX_TYPED_NAMES} (or a builtin vocabulary's name): use ovseg.Predictor "
                "for more"
            )
        return vocabulary
    raise ValueError(
        f"{spec!r} is neither class names separated by commas nor a builtin vocabulary "
        f"({', '.join(builtin_vocabulary_names())}); one class alone is written with a ';' "
        "after it (e.g. 'cat;')"
    )


def render_prediction(image: np.ndarray, pred: Prediction) -> Tuple[np.ndarray, ...]:
    """(overlay, label map, heat maps, legend HTML) of one prediction; heat maps of the
    MAX_HEATMAPS names with the largest pixel shares, in the legend's order."""
    names = list(pred.names)
    meta = vocabulary_metadata(names, name="app")
    colors = np.asarray(meta.stuff_colors, dtype=np.uint8)
    dtype, ignore = label_dtype_for(len(names))
    shares = np.bincount(pred.labels.ravel(), minlength=len(names)) / pred.labels.size
    image, labels = display_size(image, pred.labels)  # a large photo: what the page shows
    h, w = image.shape[:2]
    scale = overlay_scale(h, w, MIN_DISPLAY_SIZE)
    overlay = draw_semantic(
        image, labels.astype(dtype), meta, ignore_label=ignore, scale=scale
    ).get_image()
    factor = max(int(round(scale)), 1)
    label_map = colors[labels].repeat(factor, axis=0).repeat(factor, axis=1)
    shown = sorted(range(len(names)), key=lambda k: (-shares[k], k))[:MAX_HEATMAPS]
    maps = pred.score_maps(shown, size=(h, w))
    heatmaps, _ = heatmap_grid(image, maps, [names[k] for k in shown], value_label="class score")
    return overlay, label_map, heatmaps, legend_html(names, colors.tolist(), shares)


def display_size(image: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``image`` (area-averaged) and ``labels`` (nearest) at most MAX_DISPLAY_SIDE long."""
    h, w = labels.shape
    shrink = MAX_DISPLAY_SIDE / max(h, w)
    if shrink >= 1:
        return image, labels
    size = (max(1, round(h * shrink)), max(1, round(w * shrink)))
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    shown = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return shown, labels[rows[:, None], cols[None, :]]


def example_images(folder: Path, count: int = 3) -> List[str]:
    """A few toy-world scenes written as PNGs into ``folder``, for the page's examples."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    paths = []
    for i in range(count):
        image, _ = toy_world.render_scene(
            toy_world.sample_scene(toy_world.sample_rng(0, "validation", i))
        )
        path = folder / f"toy_scene_{i}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return paths


CSS = """
.legend {list-style: none; padding: 0; margin: 0}
.legend-item {display: flex; align-items: center; gap: 0.5em; margin: 0.2em 0}
.legend-swatch {display: inline-block; width: 1.2em; height: 1.2em; border: 1px solid #444}
.legend-share {color: #666}
"""


def build_ui(app: SegmentApp, examples: Sequence[str] = ()):
    """The gradio page over ``app``; element ids: input-image, vocabulary, model,
    segment-button, overlay, label-map, heatmaps, legend."""
    import gradio as gr

    def run(image, vocabulary, label):
        try:
            return app.segment(image, vocabulary, label)
        except (ValueError, OSError) as e:  # OSError: an upload that is no image
            raise gr.Error(str(e)) from e

    labels = list(app.choices)
    with gr.Blocks(title="ovseg: open-vocabulary segmentation") as page:
        gr.Markdown(
            "## ovseg: segment an image with your own words\n"
            "Upload an image, type class names separated by commas and press *Segment*. "
            "The toy models know the offline world's shapes (circle, square, triangle, star, "
            "ring, cross, diamond, crescent) on textured backgrounds."
        )
        with gr.Row():
            with gr.Column(scale=1):
                # the file, not gradio's array: gradio's image_mode="RGB" clips a 16-bit PNG
                # to white and gives a GIF as palette indices
                image = gr.Image(
                    type="filepath", image_mode=None, sources=["upload"], label="Image",
                    elem_id="input-image",
                )  # fmt: skip
                vocabulary = gr.Textbox(
                    value=DEFAULT_VOCABULARY, label="Vocabulary", elem_id="vocabulary",
                    info="comma-separated class names, or a builtin vocabulary (voc20, ade150)",
                )  # fmt: skip
                model = gr.Dropdown(labels, value=labels[0], label="Model", elem_id="model")
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                if examples:
                    gr.Examples(list(examples), inputs=[image], label="Toy-world scenes")
            with gr.Column(scale=1):
                overlay = gr.Image(label="Overlay", format="png", elem_id="overlay")
                legend = gr.HTML(label="Legend", elem_id="legend")
            with gr.Column(scale=1):
                label_map = gr.Image(label="Label map", format="png", elem_id="label-map")
                heatmaps = gr.Image(label="Per-word heat maps", format="png", elem_id="heatmaps")
        button.click(
            run, [image, vocabulary, model], [overlay, label_map, heatmaps, legend],
            api_name="segment",
        )  # fmt: skip
    return page


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def _check_port_free(host: str, port: int) -> Optional[str]:
    """Why ``host:port`` cannot be served on (taken, or not an address here), or None."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return None


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=_port, default=7860, help="port to serve on (1-65535)")
    parser.add_argument("--config-file", help="a config to offer first (file or under configs/)")
    parser.add_argument("--weights", help="weights for --config-file")
    parser.add_argument(
        "--runs",
        nargs="*",
        default=[str(CHECKOUT / "output")],
        help="folders searched for trained runs (config.yaml + model_final.pth); "
        "default: output/",
    )
    parser.add_argument("--device", help="cpu, cuda, ...; default: CUDA when available")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.weights and not args.config_file:
        parser.error("--weights needs --config-file")
    if args.weights and not os.path.isfile(args.weights):
        parser.error(f"--weights {args.weights}: no such file")
    for folder in set(args.runs) - set(parser.get_default("runs")):  # a misspelt one given
        if not os.path.isdir(folder):
            parser.error(
                f"--runs {folder}: no such folder; give the folders holding trained runs "
                "(an OUTPUT_DIR with config.yaml and model_final.pth, or a folder above it)"
            )
    if args.config_file:
        try:
            resolve_config_path(args.config_file)
        except FileNotFoundError as e:
            parser.error(f"--config-file: {e}")
    problem = _check_port_free(args.host, args.port)  # before the model loads, not after
    if problem:
        parser.error(f"cannot serve on {args.host}:{args.port} ({problem}); choose another --port")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        sys.exit('demo/app.py needs gradio: pip install -e ".[app]"')
    choices = default_choices([Path(r) for r in args.runs], args.config_file, args.weights)
    app = SegmentApp(choices, device=args.device)
    try:  # the first model now, so a bad config or checkpoint stops here, not in the page
        app.predictor(choices[0].label)
    except (ValueError, OSError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
        sys.exit(f"demo/app.py: cannot load {choices[0].label}: {e}")
    examples = example_images(Path(tempfile.mkdtemp(prefix="ovseg_app_")))
    logger.info("Models: %s", ", ".join(app.choices))
    build_ui(app, examples).launch(
        server_name=args.host, server_port=args.port, ssr_mode=False, css=CSS, show_error=True,
        footer_links=[], allowed_paths=[str(Path(p).parent) for p in examples],
    )  # fmt: skip


if __name__ == "__main__":
    main()
