#!/usr/bin/env bash
# Copy the pure-Python packages ovseg needs that a CUDA machine's image may lack into DIR, for
# tools/gpu_check.sh (which puts .cache/gpu_site, or $OVSEG_SITE, on PYTHONPATH).
#
#   [TARGET_PY=3.12] bash tools/make_gpu_bundle.sh [DIR] [SITE_PACKAGES]
#
# DIR defaults to .cache/gpu_site (ignored by git); SITE_PACKAGES to the one of this
# environment's python. Copies source only: no torch, numpy or compiled extension (*.so)
# travels; detectron2 must be ovseg's pure-Python install (tools/install_detectron2.py), whose
# _C is a Python placeholder. The one compiled package the tokenizer needs (regex) comes
# from PyPI as the wheel of this environment's version for CPython TARGET_PY (the GPU
# machine's, default 3.12).
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
# pycocotools' compiled RLE module stays behind: detectron2.structures imports it, ovseg's
# semantic path never calls it, so a placeholder imports and raises only when called
if [ -d "$DIR/pycocotools" ]; then
    cat >"$DIR/pycocotools/_mask.py" <<'PY'
"""Placeholder of pycocotools' compiled RLE module, left out by tools/make_gpu_bundle.sh."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise ImportError(
            f"pycocotools._mask.{name} is compiled code the GPU bundle leaves out; "
            "pip install pycocotools on this machine"
        )

    return unavailable
PY
fi
REGEX=$("$PY" -c 'import importlib.metadata as m; print(m.version("regex"))')
WHEELS=$(mktemp -d)
"$PY" -m pip download -q "regex==$REGEX" --only-binary=:all: --no-deps -d "$WHEELS" \
    --python-version "${TARGET_PY:-3.12}" --implementation cp --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
"$PY" -m zipfile -e "$WHEELS"/regex-*.whl "$DIR"
rm -rf "$WHEELS"
test -f "$DIR/open_clip/bpe_simple_vocab_16e6.txt.gz" || {
    echo "make_gpu_bundle: open_clip's tokenizer vocabulary is missing" >&2
    exit 1
}
du -sh "$DIR"
