#!/usr/bin/env python
"""Write the CLIP text embeddings of a vocabulary to a file (and the teacher's cache).

Text embeddings are computed once per (CLIP, templates, names) and cached by the teacher;
this tool computes them ahead of time, e.g. on a GPU machine for an 847-class vocabulary, and
also writes them as a plain tensor file for other code:

    python tools/dump_text_embeddings.py \\
        --config-file configs/ade20k/maskclip/maskclip_vitb16_bs1.yaml \\
        --vocabulary ade847 --output output/text/ade847_vitb16.pt

The rows are what the config's models classify with (MODEL.CLIP.PROMPT_NAMES's words, a class
with synonyms the mean of its words). The file holds ``{"names", "prompts", "templates",
"embeddings" (K, D), "fingerprint"}`` (``ovseg.clip.export``).
"""

from __future__ import annotations

import argparse
import sys

from ovseg.clip.export import export_text_embeddings
from ovseg.clip.templates import TEMPLATE_SETS
from ovseg.engine.defaults import load_config
from ovseg.utils.cli import parse_trailing_opts, run_reporting_errors
from ovseg.vocab import builtin_vocabulary_names


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True, help="config naming the CLIP (MODEL.CLIP.*)")
    p.add_argument(
        "--vocabulary", required=True,
        help=f"builtin name ({', '.join(builtin_vocabulary_names())}), a JSON file, or a "
        "comma-separated list",
    )  # fmt: skip
    p.add_argument(
        "--templates", default="",
        help=f"template set ({', '.join(TEMPLATE_SETS)}) or a .json list (default "
        "MODEL.CLIP.TEMPLATES)",
    )  # fmt: skip
    p.add_argument("--output", required=True, help="file to write (.pt)")
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs (or after --opts)"
    )
    return parse_trailing_opts(p, argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def work() -> None:
        cfg = load_config(args.config_file, args.opts)
        emb = export_text_embeddings(cfg, args.vocabulary, args.output, args.templates)
        print(f"wrote {tuple(emb.shape)} embeddings of {len(emb)} names to {args.output}")

    return run_reporting_errors("dump_text_embeddings.py", work)


if __name__ == "__main__":
    sys.exit(main())
