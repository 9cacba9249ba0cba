"""Prompts longer than the text context: a warning showing the cut, or an error on collision.

open_clip's tokenizer cuts a prompt to the model's context length without a word. Two class
names that differ only after the cut then get identical tokens, hence identical embeddings,
and the student can never tell them apart. :func:`check_prompt_tokens` refuses that, and
warns (showing what the text encoder sees) when a cut leaves every name distinct.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from torch import Tensor

__all__ = ["check_prompt_tokens"]

logger = logging.getLogger(__name__)


def _cut_prompts(
    tokenizer: Callable, prompts: Sequence[str], full: Sequence[bool], context: int
) -> List[Tuple[str, int, str]]:
    """(prompt, its token count, the text kept) of every prompt longer than ``context``.

    Only prompts whose token row is ``full`` can have been cut. Only tokenizers with
    open_clip's ``encode``/``decode`` (SimpleTokenizer) can tell; for others the list is
    empty and only collisions (:func:`check_prompt_tokens`) are found.
    """
    encode, decode = getattr(tokenizer, "encode", None), getattr(tokenizer, "decode", None)
    if encode is None or decode is None or getattr(tokenizer, "reduction_fn", None):
        return []
    out = []
    for prompt in (p for p, f in zip(prompts, full) if f):
        ids = encode(prompt)
        if len(ids) + 2 > context:  # + start and end of text
            out.append((prompt, len(ids) + 2, decode(ids[: context - 2]).strip()))
    return out


def check_prompt_tokens(
    tokenizer: Callable,
    names: Sequence[str],
    templates: Sequence[str],
    tokens: Tensor,
) -> None:
    """Refuse class names whose prompts tokenise identically; warn about cut prompts.

    Args:
        tokenizer (callable): the open_clip tokenizer that made ``tokens``.
        names: K class names.
        templates: T templates; prompt ``k * T + t`` is ``templates[t].format(names[k])``.
        tokens (Tensor): (K * T, context) the token ids the text encoder gets.

    Raises:
        ValueError: two names whose every prompt has the same tokens (the text context cut
            what told them apart), naming both and the text kept.
    """
    k, t = len(names), len(templates)
    context = int(tokens.shape[-1])
    rows = tokens.view(k, t, context).cpu()
    prompts = [tp.format(n) for n in names for tp in templates]
    cut = _cut_prompts(tokenizer, prompts, (tokens[:, -1] != 0).tolist(), context)
    seen: Dict[bytes, int] = {}
    for i in range(k):
        key = rows[i].numpy().tobytes()
        j: Optional[int] = seen.setdefault(key, i)
        if j != i:
            kept = [c for p, _, c in cut if p == templates[0].format(names[i])]
            shown = f"; the text encoder sees only {kept[0]!r}" if kept else ""
            raise ValueError(
                f"Class names {names[j]!r} and {names[i]!r} give identical text tokens with "
                f"the templates {list(templates)[:3]} (context of {context} tokens){shown}, "
                "so they would get one embedding. Shorten the names so that they differ "
                "within the context"
            )
    if cut:
        examples = "; ".join(f"{p!r} ({n} tokens) -> {c!r}" for p, n, c in cut[:3])
        more = f" and {len(cut) - 3} more" if len(cut) > 3 else ""
        logger.warning(
            f"{len(cut)} prompts are longer than the text context of {context} tokens and are "
            f"cut (names stay distinct): {examples}{more}"
        )
