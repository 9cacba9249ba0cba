# Test-time prompt tuning is described in the FreeSeg paper (CVPR 2023, Sec. 3, "test time
# prompt tuning") and absent from the release: bytedance/FreeSeg @7707335 declares
# TEST.OPTIM.LR 0.001 (mask2former/config.py:124-125) and never reads it. Written here.
"""FreeSeg's test-time prompt tuning (TTPT): per test image, a few steps of entropy
minimisation of the unseen-class predictions over the learnable class-context tokens, which
are restored after the image.

For one image, with the pixel decoder's features computed once:

1. the head runs with the current prompts; every query's distribution over the unseen
   classes is ``softmax`` of its unseen-class logits (seen classes and no-object left out);
2. the ``select_fraction`` of queries with the lowest entropy (the confident ones, at least
   one) give the loss, their mean entropy;
3. AdamW (as test-time prompt tuning for CLIP, Shu et al. 2022) steps the class-context
   tokens; the task tokens, the network and CLIP stay as they are.

Then the image is predicted as usual (every test task, the CLIP ensemble) with the tuned
tokens, and the tokens, their ``requires_grad`` and the feature cache are restored, so each
image starts from the trained prompts. With fewer than two unseen classes in the vocabulary
nothing is tuned: a distribution over one class has no entropy to lower (said once). The
steps, learning rate and fraction are ours: the paper gives no numbers and the release no
code (the learning rate defaults to the unused TEST.OPTIM.LR).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from typing import Callable, Collection, Iterator, List, Optional, Sequence

import torch
from torch import Tensor

from ...vocab import normalize_name

__all__ = ["TestTimePromptTuning", "unseen_entropy"]

logger = logging.getLogger(__name__)

# tuning edits a model's prompt tokens in place: one image at a time, whichever the thread
# (a Predictor shared by a web server's threads saw the others' tuned tokens)
_TUNING = threading.RLock()


def unseen_entropy(logits: Tensor, unseen: Tensor, fraction: float) -> Tensor:
    """Mean entropy of the most confident queries' unseen-class distributions.

    Args:
        logits (Tensor): (Q, C + 1) query logits, no-object last.
        unseen (Tensor): (C,) bool, the unseen classes (at least one).
        fraction (float): share of the Q queries kept, those of lowest entropy (>= 1 query).

    Returns:
        Tensor: () the loss.
    """
    logp = logits[:, :-1][:, unseen].float().log_softmax(dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    k = max(1, math.ceil(fraction * entropy.numel()))
    return entropy.topk(k, largest=False).values.mean()


class TestTimePromptTuning:
    """Per-image entropy minimisation over FreeSeg's class-context tokens (module docstring)."""

    __test__ = False  # a name pytest would otherwise try to collect

    def __init__(self, *, steps: int = 1, lr: float = 0.001, select_fraction: float = 0.1):
        """
        Args:
            steps (int): optimisation steps per image (>= 1).
            lr (float): AdamW learning rate (official TEST.OPTIM.LR 0.001, unused there).
            select_fraction (float): in (0, 1], share of queries in the loss.
        """
        if steps < 1 or not lr > 0 or not 0 < select_fraction <= 1:
            raise ValueError(
                f"test-time prompt tuning needs steps >= 1, lr > 0 and a fraction in (0, 1]; got "
                f"steps {steps}, lr {lr}, fraction {select_fraction} "
                "(MODEL.FREESEG.TEST_PROMPT_TUNING)"
            )
        self.steps, self.lr, self.select_fraction = int(steps), float(lr), float(select_fraction)

    @classmethod
    def from_config(cls, cfg) -> Optional[TestTimePromptTuning]:
        """MODEL.FREESEG.TEST_PROMPT_TUNING, or None when not ENABLED."""
        t = cfg.MODEL.FREESEG.TEST_PROMPT_TUNING
        if not t.ENABLED:
            return None
        return cls(steps=t.STEPS, lr=t.LR, select_fraction=t.SELECT_FRACTION)

    def tune(self, model, pixels, names: Sequence[str], task: str, unseen: Tensor) -> List[float]:
        """Step ``model.prompt.class_context`` in place; returns the loss before each step."""
        tokens = model.prompt.class_context
        opt = torch.optim.AdamW([tokens], lr=self.lr, weight_decay=0.0)
        history = []
        with torch.enable_grad():
            for _ in range(self.steps):
                text = model.text_features(names, task)
                logits = model.decode(pixels, text)["pred_logits"][0]
                loss = unseen_entropy(logits, unseen, self.select_fraction)
                (grad,) = torch.autograd.grad(loss, [tokens])  # no gradient into the network
                tokens.grad = grad
                opt.step()
                tokens.grad = None
                history.append(float(loss))
        return history

    def start(
        self, model, pixels, names: Sequence[str], task: str, seen: Optional[Collection[str]] = None
    ) -> Callable[[], None]:
        """Tune ``model``'s prompts for one image; returns the function that restores them.

        Args:
            model: a :class:`~ovseg.modeling.meta_arch.freeseg.FreeSeg`.
            pixels: its :meth:`pixel_features` of the image (batch of one).
            names: the image's class names; task: the task whose prompts are tuned.
            seen: the normalised seen names (None: the model's ``seen_classes``); the others
                are tuned for.

        ``last_history`` holds the loss before each step (empty when nothing was tuned).
        """
        seen = model.seen_classes if seen is None else seen
        unseen = torch.tensor([normalize_name(n) not in seen for n in names], dtype=torch.bool)
        self.last_history: List[float] = []
        if int(unseen.sum()) < 2:
            if unseen.any() and not getattr(self, "_warned_one_unseen", False):
                self._warned_one_unseen = True
                only = [n for n, u in zip(names, unseen.tolist()) if u]
                logger.warning(
                    f"Test-time prompt tuning: the vocabulary's one unseen class {only[0]!r} "
                    "has no entropy over the unseen classes to lower, so its images are "
                    "predicted with the trained prompts"
                )
            return lambda: None
        prompt = model.prompt
        tokens = prompt.class_context
        saved, grad_flags = tokens.detach().clone(), [p.requires_grad for p in prompt.parameters()]

        def restore() -> None:
            with torch.no_grad():
                tokens.copy_(saved)
            for p, flag in zip(prompt.parameters(), grad_flags):
                p.requires_grad_(flag)

        prompt.requires_grad_(False)
        tokens.requires_grad_(True)  # only the class context moves; the cache is bypassed
        try:
            self.last_history = self.tune(model, pixels, names, task, unseen.to(tokens.device))
        except BaseException:
            restore()
            raise
        return restore

    @contextlib.contextmanager
    def applied(
        self, model, pixels, names: Sequence[str], task: str, seen: Optional[Collection[str]] = None
    ) -> Iterator[List[float]]:
        """:meth:`start` as a ``with`` block: tuned inside, restored after (also when the
        block raises or is interrupted), one block at a time across threads; yields the
        losses."""
        with _TUNING:
            restore = self.start(model, pixels, names, task, seen)
            try:
                yield self.last_history
            finally:
                restore()
