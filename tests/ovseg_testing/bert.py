"""A tiny random BERT and its WordPiece tokenizer, saved locally as MODEL.XPM.BERT_NAME
(no download): what the official XPM class embeddings read, at test size."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

# word pieces of the XPM test names and of a two-word and a split name
TINY_BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                   "cat", "dog", "bird", "traffic", "light", "hair", "dr", "##ier"]  # fmt: skip


def require_transformers() -> None:
    """Skip the calling test module without the xpm-official extra (fail under
    OVSEG_REQUIRE_EXTRAS=1, as .ci/run sets it)."""
    import pytest

    if importlib.util.find_spec("transformers") is None:
        reason = (
            'the xpm-official extra is missing (transformers): pip install -e ".[xpm-official]"'
        )
        if os.environ.get("OVSEG_REQUIRE_EXTRAS") == "1":
            raise RuntimeError(reason + " (OVSEG_REQUIRE_EXTRAS=1)")
        pytest.skip(reason, allow_module_level=True)


def make_tiny_bert(folder: Path, hidden: int = 32, seed: int = 0, words: Sequence[str] = ()) -> str:
    """Save a random 1-layer BERT of width ``hidden`` and its tokenizer into ``folder``; its
    vocabulary is :data:`TINY_BERT_VOCAB` plus ``words``.

    Returns:
        str: the folder, for MODEL.XPM.BERT_NAME.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    pieces = [*TINY_BERT_VOCAB, *(w for w in words if w not in TINY_BERT_VOCAB)]
    vocab.write_text("\n".join(pieces) + "\n")
    BertTokenizer(str(vocab), do_lower_case=True).save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(pieces),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(str(folder))
    return str(folder)
