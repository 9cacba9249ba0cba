#!/usr/bin/env bash
# Copy the pure-Python packages ovseg needs that a CUDA machine's image may lack into DIR, for
# tools/gpu_check.sh (which puts .cache/gpu_site, or $OVSEG_SITE, on PYTHONPATH).
#
#   [TARGET_PY=3.12] bash tools/make_gpu_bundle.sh [DIR] [SITE_PACKAGES]
#
# DIR defaults to .cache/gpu_site (ignored by git); SITE_PACKAGES to the one of this
# environment's python. Copies source only: no torch, numpy or compiled extension (*.so)
# travels; detectron2 must be ovseg's pure-Python install (tools/install_detectron2.py), whose
# _C is a Python placeholder. The two compiled packages ovseg needs (regex for the tokenizer,
# pycocotools for masks) come from PyPI as the wheels of this environment's versions for
# CPython TARGET_PY (the GPU machine's, default 3.12).
set -euo pipefail
DIR=${1:-.cache/gpu_site}
PY=${PYTHON:-python}
SITE=${2:-$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')}
PACKAGES="detectron2 open_clip fvcore iopath yacs ftfy wcwidth termcolor omegaconf antlr4 \
hydra portalocker tabulate pycocotools cloudpickle pytest _pytest pluggy iniconfig py pygments"
rm -rf "$DIR"
mkdir -p "$DIR"
for pkg in $PACKAGES; do
    if [ -d "$SITE/$pkg" ]; then
        cp -r "$SITE/$pkg" "$DIR/"
    elif [ -f "$SITE/$pkg.py" ]; then  # a single-module package
        cp "$SITE/$pkg.py" "$DIR/"
    else
        echo "make_gpu_bundle: $pkg not in $SITE (skipped)" >&2
    fi
done
find "$DIR" -name '__pycache__' -prune -exec rm -rf {} +
find "$DIR" -name '*.so' -delete
# the two compiled packages come as this environment's versions' wheels for CPython
# TARGET_PY: regex (the tokenizer; required) and pycocotools (its RLE module, which the XPM
# and FreeSeg mappers call to rasterise polygons and encode masks)
wheel() {  # wheel PACKAGE DEST: download and unpack; status 1 when PyPI has no such wheel
    local version wheels
    version=$("$PY" -c "import importlib.metadata as m; print(m.version('$1'))")
    wheels=$(mktemp -d)
    if "$PY" -m pip download -q "$1==$version" --only-binary=:all: --no-deps -d "$wheels" \
        --python-version "${TARGET_PY:-3.12}" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64; then
        "$PY" -m zipfile -e "$wheels"/"$1"-*.whl "$2"
        rm -rf "$wheels"
    else
        rm -rf "$wheels"
        return 1
    fi
}
wheel regex "$DIR"
if [ -d "$DIR/pycocotools" ]; then
    # detectron2.structures imports the RLE module, so it must import whatever happens: the
    # wheel's extension is kept under a name the import system skips and _mask.py loads it,
    # falling back to a placeholder that raises only when called (the semantic students never
    # call it) when there is no wheel or it does not load (another numpy ABI)
    if wheel pycocotools "$DIR"; then
        for so in "$DIR"/pycocotools/_mask*.so; do mv "$so" "$DIR/pycocotools/_mask_compiled.bin"; done
    else
        echo "make_gpu_bundle: no pycocotools wheel for CPython ${TARGET_PY:-3.12}; the XPM and" \
            "FreeSeg mapper rows will need pip install pycocotools" >&2
    fi
    cat >"$DIR/pycocotools/_mask.py" <<'PY'
"""pycocotools' compiled RLE module as tools/make_gpu_bundle.sh ships it: the wheel's extension
(_mask_compiled.bin) when it loads here, else a placeholder that raises when called."""

import importlib.machinery
import importlib.util
import os
import sys

_PATH = os.path.join(os.path.dirname(__file__), "_mask_compiled.bin")
try:
    _loader = importlib.machinery.ExtensionFileLoader(__name__, _PATH)
    _spec = importlib.util.spec_from_file_location(__name__, _PATH, loader=_loader)
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    sys.modules[__name__] = _module
    _REASON = None
except ImportError as error:  # no wheel, or built for another numpy / CPython
    _REASON = str(error)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise ImportError(
            f"pycocotools._mask.{name} is compiled code the GPU bundle could not load "
            f"({_REASON}); pip install pycocotools on this machine"
        )

    return unavailable
PY
fi
test -f "$DIR/open_clip/bpe_simple_vocab_16e6.txt.gz" || {
    echo "make_gpu_bundle: open_clip's tokenizer vocabulary is missing" >&2
    exit 1
}
du -sh "$DIR"
