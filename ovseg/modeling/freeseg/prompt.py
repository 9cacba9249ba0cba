# Follows the official FreeSeg LearnablePromptExtractor (mask2former/modeling/clip_adapter/
# text_prompt.py:46-199) and its cache (adapter.py:28-55), re-written on open_clip.
"""FreeSeg's adaptive prompts: learnable task and class-context tokens through frozen CLIP text.

Each class name becomes one token sequence (``text_prompt.py:133-154``; note where the start
token sits: after the task part, ``torch.cat([task_prompt, prefix, noun, suffix])`` at
``:149``)::

    [task-name tokens][task context][SOT][class context][class-name tokens]["."][EOT][pad...]

- task-name tokens: the frozen CLIP token embeddings of the task text, e.g. "semantic
  segmentation." without its own SOT/EOT (``:77-98``);
- task context: ``num_task_tokens`` learnable tokens, kaiming normal with a=2 (``:70-75``);
- class context: ``num_class_tokens`` learnable tokens, N(0, 0.02) (``:63-68``);
- "." and EOT: the embeddings of "X."'s tokens 2 and 3, padding that of token id 0
  (``:101-112``).

The sequence (padded to the context length) goes through CLIP's positional embedding,
causal transformer, ``ln_final`` and text projection; the feature at EOT is L2-normalised
(``:155-199``). CLIP stays frozen: gradients reach only the two learnable token sets.

Features computed without gradients are cached: while the prompts are frozen, and, while
they train, for as long as no token changes (an evaluation of the prompt stage encodes its
vocabulary once, not once per region; the release re-encodes it per call, ``adapter.py:47``,
so a COCO-Stuff region test costs 171 text passes per region). The official cache
(``adapter.py:28-46``) is keyed by the noun alone, so the first task that asks for a noun
fixes its features for every task; ``cache_by_task`` (default) keys it by (task, noun).
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...clip import CLIPTeacher
from ...clip.prompt_names import apply_prompt_names
from ...utils.safe_load import torch_load_weights
from ..host_copy import device_memo

__all__ = ["AdaptivePromptLearner", "DEFAULT_TASK_NAMES", "load_prompt_tokens"]

#: the official task texts (``proposal_classification.py:99-107``, ``config.py:127``)
DEFAULT_TASK_NAMES = ("semantic segmentation.", "instance segmentation.", "panoptic segmentation.")

_TEXT_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final")


class AdaptivePromptLearner(nn.Module):
    """Learnable task and class-context prompts for the frozen CLIP text encoder.

    Parameters: ``task_context`` (num_task_tokens, W) and ``class_context``
    (num_class_tokens, W), W the text transformer's width. The teacher is not a submodule:
    its weights never enter this module's state dict.
    """

    def __init__(
        self,
        teacher: CLIPTeacher,
        *,
        task_names: Sequence[str] = DEFAULT_TASK_NAMES,
        num_class_tokens: int = 16,
        num_task_tokens: int = 8,
        cache_by_task: bool = True,
        prompt_names: Optional[Mapping[str, str]] = None,
    ):
        """
        Args:
            teacher (CLIPTeacher): the frozen CLIP whose text transformer encodes prompts.
            task_names: the task texts a forward may ask for (official: with a final ".").
            num_class_tokens (int): learnable class-context tokens (official PROMPT_SHAPE[0]).
            num_task_tokens (int): learnable task tokens (official TASK_PROMPT_SHAPE); 0 = none.
            cache_by_task (bool): key the frozen-prompt feature cache by (task, noun); False
                keys it by noun alone (the official behaviour).
            prompt_names: display name -> the noun prompted for it (MODEL.CLIP.PROMPT_NAMES,
                :mod:`ovseg.clip.prompt_names`); names it lacks are prompted as they are.
        """
        super().__init__()
        model = teacher.model
        missing = [p for p in _TEXT_PARTS if not hasattr(model, p)]
        if missing:
            raise ValueError(
                f"FreeSeg's prompts need an open_clip CLIP text tower with {_TEXT_PARTS}; "
                f"{type(model).__name__} lacks {missing} (use a CLIP model, not a HF text tower)"
            )
        if num_class_tokens < 0 or num_task_tokens < 0:
            raise ValueError(
                f"prompt token counts must be >= 0, got class {num_class_tokens}, "
                f"task {num_task_tokens}"
            )
        if isinstance(task_names, str) or not task_names:
            raise ValueError(f"task_names must be a non-empty list of texts, got {task_names!r}")
        self._teacher: List[CLIPTeacher] = [teacher]
        self.task_names: Tuple[str, ...] = tuple(task_names)
        self.cache_by_task = bool(cache_by_task)
        self.prompt_names = dict(prompt_names or {})
        width = model.token_embedding.weight.shape[1]
        self.class_context = nn.Parameter(torch.empty(num_class_tokens, width))
        nn.init.normal_(self.class_context, std=0.02)
        self.task_context = nn.Parameter(torch.empty(num_task_tokens, width))
        if num_task_tokens:
            nn.init.kaiming_normal_(self.task_context, a=2)
        self._tokens: Dict[str, Tuple[Tensor, int, int]] = {}  # text -> (ids, sot, eot)
        self._cache: Dict[Tuple[str, ...], Tensor] = {}
        self._cache_tokens: Tuple[int, ...] = ()  # the tokens' versions the cache is for

    @property
    def teacher(self) -> CLIPTeacher:
        return self._teacher[0]

    @property
    def context_length(self) -> int:
        return int(self.teacher.model.positional_embedding.shape[0])

    @property
    def trainable(self) -> bool:
        """Whether any prompt token takes gradients (then nothing is cached)."""
        return any(p.requires_grad for p in self.parameters())

    def clear_cache(self) -> None:
        """Forget cached features (done automatically when prompt weights are loaded)."""
        self._cache.clear()

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def _check_task(self, task: str) -> None:
        if task not in self.task_names:
            raise ValueError(
                f"task {task!r} is not one of this prompt learner's {self.task_names} "
                "(MODEL.FREESEG.TASK_NAMES)"
            )

    # ------------------------------------------------------------------ tokens
    def _content(self, text: str) -> Tuple[Tensor, int, int]:
        """Token ids of ``text`` without SOT/EOT, and the SOT and EOT ids."""
        hit = self._tokens.get(text)
        if hit is None:
            row = self.teacher.tokenizer([text])[0]
            length = int((row != 0).sum())
            if row[self.context_length - 1] != 0 or length < 2:
                raise ValueError(
                    f"{text!r} does not fit the text context of {self.context_length} tokens"
                )
            hit = (row[1 : length - 1].clone(), int(row[0]), int(row[length - 1]))
            self._tokens[text] = hit
        return hit

    def _embed(self, ids: Sequence[int]) -> Tensor:
        emb = self.teacher.model.token_embedding
        with torch.no_grad():
            return emb(self._on_device(tuple(ids), emb.weight.device))

    def _on_device(self, values: Tuple[int, ...], device: torch.device) -> Tensor:
        """``values`` as a long tensor on ``device``, memoised (a tensor from a list is a
        copy from the host: a wait for the device per token list and step)."""
        cache = self.__dict__.setdefault("_ids_cache", {})
        return device_memo(
            cache, (values, device), lambda: torch.tensor(values, dtype=torch.long, device=device)
        )

    # string and tokenizer work, one guard per class name: never traced by MODEL.COMPILE
    @torch.compiler.disable
    def sequences(self, names: Sequence[str], task: str) -> Tuple[Tensor, Tensor]:
        """The input embeddings of every name's prompt and the position of its EOT.

        Args:
            names: K class names.
            task (str): one of ``task_names``.

        Returns:
            (Tensor, Tensor): (K, context, W) embeddings (differentiable in the learnable
            tokens) and (K,) long EOT positions.
        """
        self._check_task(task)
        task_ids, sot, eot = self._content(task)
        dot_ids = self._content("X.")[0][1:]  # the official "." (``text_prompt.py:102-110``)
        task_part = torch.cat([self._embed(task_ids.tolist()), self.task_context])
        sot_e, eot_e, pad_e = self._embed([sot]), self._embed([eot]), self._embed([0])
        head = torch.cat([task_part, sot_e, self.class_context])
        tail = torch.cat([self._embed(dot_ids.tolist()), eot_e])
        rows, ends = [], []
        for name in names:
            noun = self._embed(self._content(name)[0].tolist())
            length = len(head) + len(noun) + len(tail)
            if length > self.context_length:
                raise ValueError(
                    f"the prompt of class {name!r} for task {task!r} has {length} tokens; the "
                    f"text context holds {self.context_length}: shorten the name"
                )
            pad = pad_e.expand(self.context_length - length, -1)
            rows.append(torch.cat([head, noun, tail, pad]))
            ends.append(length - 1)
        return torch.stack(rows), self._on_device(tuple(ends), head.device)

    # ------------------------------------------------------------------ features
    def encode(self, embeddings: Tensor, eot: Tensor) -> Tensor:
        """Frozen CLIP text transformer on prompt embeddings: (K, ctx, W), (K,) -> (K, D),
        L2-normalised."""
        model = self.teacher.model
        x = embeddings + model.positional_embedding.to(embeddings.dtype)
        x = model.transformer(x, attn_mask=getattr(model, "attn_mask", None))
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = getattr(model, "text_projection", None)
        if isinstance(proj, nn.Module):
            x = proj(x)
        elif proj is not None:
            x = x @ proj
        return F.normalize(x, dim=-1)

    def forward(self, names: Sequence[str], task: str) -> Tensor:
        """Prompted text features of ``names`` for ``task``.

        With gradients on and a prompt token that takes them, every call recomputes (and
        back-propagates); otherwise features are cached per (task, noun), or per noun with
        ``cache_by_task`` off (official), until a token changes.

        Args:
            names: K class names.
            task (str): one of ``task_names``.

        Returns:
            Tensor: (K, D) L2-normalised, on the teacher's device.
        """
        if isinstance(names, str) or not names:
            raise ValueError(f"names must be a non-empty list of class names, got {names!r}")
        self._check_task(task)
        names = apply_prompt_names(names, self.prompt_names)
        if self.trainable and torch.is_grad_enabled():  # back-propagated: never cached
            return self.encode(*self.sequences(names, task))
        # in-place updates (optimiser steps, loading) bump a tensor's version: a cache made
        # for other tokens is dropped
        tokens = tuple(p._version for p in (self.class_context, self.task_context))
        if tokens != self._cache_tokens:
            self._cache.clear()
            self._cache_tokens = tokens
        key = (lambda n: (task, n)) if self.cache_by_task else (lambda n: (n,))
        todo = [n for n in dict.fromkeys(names) if key(n) not in self._cache]
        if todo:
            with torch.no_grad():
                feats = self.encode(*self.sequences(todo, task))
            self._cache.update({key(n): f for n, f in zip(todo, feats)})
        return torch.stack([self._cache[key(n)] for n in names])


def load_prompt_tokens(
    prompt: AdaptivePromptLearner, path: Union[str, os.PathLike], freeze: bool = True
) -> AdaptivePromptLearner:
    """Load the prompt tokens learnt by the prompt stage into ``prompt`` and freeze them.

    As the official ``build_prompt_learner`` (``clip_adapter/__init__.py:21-40``): the
    checkpoint's ``...prompt.class_context`` / ``...prompt.task_context`` are taken whatever
    the prefix, and the tokens stop training (so their features are cached).

    Args:
        prompt (AdaptivePromptLearner): the prompts to fill.
        path: a detectron2 checkpoint (a dict with "model") or a bare state dict.
        freeze (bool): stop the tokens' gradients after loading.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.FREESEG.PROMPT_CHECKPOINT {str(path)!r} does not exist; give the prompt "
            "stage's checkpoint (e.g. its model_final.pth) or '' to learn prompts from scratch"
        )
    state = torch_load_weights(path)  # weights_only: a checkpoint never runs code
    from ...engine.checkpoint_digest import check_contents  # a changed file is refused
    from ...engine.checkpoint_fit import META_KEY

    check_contents(str(path), state, META_KEY, ["model"])
    state = state.get("model", state)
    found = {}
    for key, value in state.items():
        for name in ("class_context", "task_context"):
            if key == name or key.endswith("prompt." + name):
                found[name] = torch.as_tensor(value)
    missing = sorted({"class_context", "task_context"} - set(found))
    if missing:
        raise ValueError(
            f"{str(path)!r} holds no prompt tokens {missing}; is it a prompt-stage checkpoint?"
        )
    for name, value in found.items():
        have = getattr(prompt, name)
        if value.shape != have.shape:
            raise ValueError(
                f"{str(path)!r}: {name} has shape {tuple(value.shape)}, the prompt learner "
                f"{tuple(have.shape)}; MODEL.FREESEG prompt token counts or the CLIP differ"
            )
    prompt.load_state_dict(found)
    if freeze:
        prompt.requires_grad_(False)
    return prompt
