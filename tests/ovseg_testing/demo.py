"""demo/predictor.py and demo/demo.py, imported the way ``python demo/demo.py`` imports them."""

from __future__ import annotations

import functools
import importlib.util
import sys

from ovseg_testing.paths import ROOT

DEMO_DIR = ROOT / "demo"


@functools.cache
def load_demo_modules():
    """(predictor, demo) modules: ``demo/`` on ``sys.path`` for ``import predictor`` as the
    script finds it, and demo.py loaded from its file (once per test session)."""
    if str(DEMO_DIR) not in sys.path:
        sys.path.insert(0, str(DEMO_DIR))
    import predictor  # noqa: PLC0415  (found through DEMO_DIR)

    spec = importlib.util.spec_from_file_location("ovseg_demo_cli", DEMO_DIR / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo
    spec.loader.exec_module(demo)
    return predictor, demo


@functools.cache
def load_script(relative: str):
    """A repository script that is not a package module (``demo/app.py``,
    ``tools/screenshot_app.py``), imported from its file once per test session."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"ovseg_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
