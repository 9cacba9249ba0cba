#!/usr/bin/env bash
# Copy the pure-Python packages ovseg needs that a CUDA machine's image may lack into DIR, for
# tools/gpu_check.sh (which puts .cache/gpu_site, or $OVSEG_SITE, on PYTHONPATH).
#
#   bash tools/make_gpu_bundle.sh [DIR] [SITE_PACKAGES]
#
# DIR defaults to .cache/gpu_site (ignored by git); SITE_PACKAGES to the one of this
# environment's python. Copies source only: no torch, numpy or compiled extension (*.so)
# travels, so the bundle works on another Python version; detectron2 must be ovseg's
# pure-Python install (tools/install_detectron2.py), whose _C is a Python placeholder.
set -euo pipefail
DIR=${1:-.cache/gpu_site}
PY=${PYTHON:-python}
SITE=${2:-$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')}
PACKAGES="detectron2 open_clip fvcore iopath yacs ftfy wcwidth termcolor omegaconf antlr4 \
hydra portalocker tabulate pycocotools"
rm -rf "$DIR"
mkdir -p "$DIR"
for pkg in $PACKAGES; do
    if [ -d "$SITE/$pkg" ]; then
        # pycocotools' compiled _mask is left behind: ovseg's semantic path never imports it
        cp -r "$SITE/$pkg" "$DIR/"
    else
        echo "make_gpu_bundle: $pkg not in $SITE (skipped)" >&2
    fi
done
find "$DIR" -name '__pycache__' -prune -exec rm -rf {} +
find "$DIR" -name '*.so' -delete
test -f "$DIR/open_clip/bpe_simple_vocab_16e6.txt.gz" || {
    echo "make_gpu_bundle: open_clip's tokenizer vocabulary is missing" >&2
    exit 1
}
du -sh "$DIR"
