#!/usr/bin/env python
"""Write the CLIP text embeddings of a vocabulary to a file (and the teacher's cache).

Text embeddings are computed once per (CLIP, templates, names) and cached by the teacher;
this tool computes them ahead of time, e.g. on a GPU machine for an 847-class vocabulary, and
also writes them as a plain tensor file for other code:

    python tools/dump_text_embeddings.py \\
        --config-file configs/ade20k/maskclip/maskclip_vitb16_bs1.yaml \\
        --vocabulary ade847 --output output/text/ade847_vitb16.pt

The file holds ``{"names", "templates", "embeddings" (K, D), "fingerprint"}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovseg.clip import build_clip_teacher, get_templates  # noqa: E402
from ovseg.engine.defaults import load_config  # noqa: E402
from ovseg.vocab import Vocabulary, resolve_vocabulary  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True, help="config naming the CLIP (MODEL.CLIP.*)")
    p.add_argument(
        "--vocabulary", required=True,
        help="builtin name (ade150, ade847, coco171, voc20, pc59, pc459), a JSON file, or a "
        "comma-separated list",
    )  # fmt: skip
    p.add_argument("--templates", default="", help="template set (default MODEL.CLIP.TEMPLATES)")
    p.add_argument("--output", required=True, help="file to write (.pt)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    output = Path(args.output)
    if output.is_dir():
        raise SystemExit(f"--output {output} is a folder; give a file name, e.g. {output}/x.pt")
    cfg = load_config(args.config_file, args.opts)
    spec = args.vocabulary
    vocab = Vocabulary.from_string(spec) if "," in spec else resolve_vocabulary(spec)
    templates = get_templates(args.templates or cfg.MODEL.CLIP.TEMPLATES)
    teacher = build_clip_teacher(cfg)
    embeddings = teacher.encode_text(vocab.names, templates).cpu()
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(
            {
                "names": list(vocab.names),
                "templates": list(templates),
                "embeddings": embeddings,
                "fingerprint": teacher.fingerprint,
            },
            tmp,
        )
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {tuple(embeddings.shape)} embeddings of {len(vocab)} names to {output}")
    return output


if __name__ == "__main__":
    main()
