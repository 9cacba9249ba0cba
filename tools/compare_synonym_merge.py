#!/usr/bin/env python
"""Compare the two synonym merges (max over synonyms' scores, mean of their embeddings) on
the toy world's validation images; prints a table (docs/vocabulary.md).

    DETECTRON2_DATASETS=.cache/toy_world_default python tools/compare_synonym_merge.py
"""

import sys

from ovseg.evaluation.synonym_study import main

if __name__ == "__main__":
    sys.exit(main())
