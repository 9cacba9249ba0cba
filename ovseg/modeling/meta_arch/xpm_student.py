# Follows XPM's robust student (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423,
# maskrcnn_benchmark/modeling/detector/st_generalized_rcnn.py), re-written.
"""XPM's student: the teacher's detector, trained on ground truth and caption pseudo-masks.

As the official student (paths in that repository):
- it starts as a copy of the teacher's heads, backbone and RPN frozen
  (``st_generalized_rcnn.py:58-67, 197-200``): here the whole detector is loaded from the
  teacher's checkpoint (MODEL.XPM.TEACHER_WEIGHTS) and the backbone and RPN get no gradient
  and stay in eval mode;
- two passes per batch (``st_generalized_rcnn.py:310-383``): the ground-truth pass over the
  seen names, on training-mode RPN proposals with the ground-truth boxes added; the
  pseudo-label pass over the whole training vocabulary, on test-mode RPN proposals (no
  boxes added), for the images that have pseudo instances; no RPN loss;
- pseudo RoIs' masks get the noise-aware BCE (:func:`~ovseg.modeling.xpm.noise_aware_mask_loss`,
  weight 1); the other pseudo losses are multiplied by ``0.01 / mean(sigma)``, detached
  (``st_generalized_rcnn.py:335-341``), sigma's mean being the last one computed
  (``mask_head/mask_head.py:80`` keeps it across iterations);
- the noise head stops learning at MODEL.XPM.NOISE_FREEZE_ITER
  (``st_generalized_rcnn.py:404-406``);
- pseudo box regression is off by default (the author: it is unused); MODEL.XPM.
  PSEUDO_BOX_REG turns it on as the code has it (``loss_box_reg`` in ``loss_name``,
  ``st_generalized_rcnn.py:70``);
- the pseudo pass classifies over the inputs' ``"pseudo_vocabulary"`` when they have one (XPM's
  1203 LVIS names, MODEL.XPM.CAPTION_VOCABULARY "lvis",
  ``st_generalized_rcnn.py:71-75, 329-330``), else over the training vocabulary;
  MODEL.XPM.LVIS_BACKGROUND_QUIRK makes LVIS id 0 its background;
- with MODEL.XPM.PSEUDO_LABEL_SOURCE "online" the pseudo instances are made in the step, on
  the augmented training image, by a frozen copy of the teacher's RoI heads
  (``st_generalized_rcnn.py:42, 66-67, 218-323``; :mod:`.xpm_online`), instead of read from
  the store the mapper attaches.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage

from ...data.captions.lvis import LVIS_BACKGROUND_NAME
from ...data.captions.settings import xpm_pseudo_label_source
from ...pseudo.instances import PseudoInstanceLabeller
from ...utils.safe_load import torch_load_weights
from ...utils.state_dict import exclude_from_checkpoints
from ..host_copy import batch_index, instances_to_device
from ..xpm import freeze_noise_head_at, pseudo_loss_weight
from ..xpm.outputs import class_subset, remap_classes
from .xpm import XPMTeacher
from .xpm_online import build_online_labeller, online_pseudo_targets

__all__ = ["XPMStudent", "read_teacher_state"]

logger = logging.getLogger(__name__)

# keys of the student a teacher checkpoint lacks: its noise head, and the CLIP teacher,
# which never enters a checkpoint
STUDENT_ONLY = ("roi_heads.mask_head.noise.", "teacher.", "last_mean_sigma")


def read_teacher_state(path: str) -> Optional[Dict[str, Tensor]]:
    """The model state of a teacher checkpoint (detectron2's ``{"model": ...}`` or a bare
    state dict); None for an empty path."""
    if not path:
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.XPM.TEACHER_WEIGHTS={path!r} does not exist; train the XPM teacher first "
            "(its config's OUTPUT_DIR holds model_final.pth) or point to its checkpoint"
        )
    state = torch_load_weights(path)
    if isinstance(state, dict):  # a teacher run's checkpoint: refused when it changed on disk
        from ...engine.checkpoint_digest import check_contents
        from ...engine.checkpoint_fit import META_KEY

        check_contents(path, state, META_KEY, ["model"])
    return state.get("model", state) if isinstance(state, dict) else state


@META_ARCH_REGISTRY.register()
class XPMStudent(XPMTeacher):
    """XPM's student (see the module docstring); eval outputs as :class:`XPMTeacher`'s.

    Training inputs: "image", "vocabulary" (the full training vocabulary, unseen names
    included) and "instances" with ``gt_classes`` (indices of that vocabulary),
    ``gt_masks``, optional ``gt_boxes`` and ``gt_is_pseudo`` (bool; missing = all False).
    Non-pseudo instances must be of the seen classes.
    """

    noise_head = True
    normalize_bert = True  # the official student L2-normalises the BERT class embeddings
    # multi-GPU: on a rank whose images hold no pseudo instance the pseudo pass (and with it
    # the noise head) gets no gradient, and the noise head stops learning mid-run; DDP must
    # look for such parameters every step instead of waiting for their gradients
    ddp_find_unused_parameters = True

    @configurable
    def __init__(
        self,
        *,
        teacher_state: Optional[Dict[str, Tensor]] = None,
        noise_freeze_iter: int = 10000,
        pseudo_loss_scale: float = 0.01,
        pseudo_box_reg: bool = False,
        lvis_background_quirk: bool = False,
        online_labeller: Optional[PseudoInstanceLabeller] = None,
        **kwargs,
    ):
        """
        Args:
            teacher_state: the teacher's state dict to start from (None: as initialised).
            noise_freeze_iter (int): the iteration the noise head stops learning at (< 0:
                never).
            pseudo_loss_scale (float): the 0.01 of ``0.01 / mean(sigma)``.
            pseudo_box_reg (bool): train box regression on pseudo RoIs too.
            lvis_background_quirk (bool): with the LVIS pseudo vocabulary, its first name
                ("aerosol can") is the pseudo pass's background, as officially.
            online_labeller (PseudoInstanceLabeller, optional): make the pseudo instances in
                the training step with it (its region embedding "teacher") and a frozen copy
                of the teacher's RoI heads (``teacher_state``'s, required); None: the
                inputs' own (the store's).
            kwargs: :class:`XPMTeacher`'s.
        """
        super().__init__(**kwargs)
        self.noise_freeze_iter = int(noise_freeze_iter)
        self.pseudo_loss_scale = float(pseudo_loss_scale)
        self.pseudo_box_reg = bool(pseudo_box_reg)
        self.lvis_background_quirk = bool(lvis_background_quirk)
        # s starts at bias 1: sigma = e^0.5 until a pseudo RoI has been seen
        self.register_buffer("last_mean_sigma", torch.tensor(1.0).mul(0.5).exp())
        if teacher_state is not None:
            self.load_teacher(teacher_state)
        self.online_labeller = online_labeller
        if online_labeller is not None:
            self._copy_teacher_heads(teacher_state, online_labeller)
        for module in (self.backbone, self.proposal_generator):
            module.requires_grad_(False)
            module.eval()

    @classmethod
    def _from_config(cls, cfg) -> Dict:
        return {
            **super().from_config(cfg),
            "teacher_state": read_teacher_state(cfg.MODEL.XPM.TEACHER_WEIGHTS),
            "noise_freeze_iter": cfg.MODEL.XPM.NOISE_FREEZE_ITER,
            "pseudo_loss_scale": cfg.MODEL.XPM.PSEUDO_LOSS_SCALE,
            "pseudo_box_reg": cfg.MODEL.XPM.PSEUDO_BOX_REG,
            "lvis_background_quirk": cfg.MODEL.XPM.LVIS_BACKGROUND_QUIRK,
        }

    @classmethod
    def from_config(cls, cfg) -> Dict:
        ret = cls._from_config(cfg)
        if xpm_pseudo_label_source(cfg) == "online":
            ret["online_labeller"] = build_online_labeller(cfg, ret["teacher"])
        return ret

    def _copy_teacher_heads(self, state, labeller: PseudoInstanceLabeller) -> None:
        """The frozen teacher RoI heads of online labelling (official ``roi_heads`` beside
        ``roi_heads_student``, st_generalized_rcnn.py:42-43, 66-67): the loaded teacher's,
        kept out of checkpoints (rebuilt from MODEL.XPM.TEACHER_WEIGHTS at every build)."""
        if state is None:
            raise ValueError(
                "online pseudo-labels need the teacher's weights (MODEL.XPM.TEACHER_WEIGHTS) "
                "for the frozen teacher RoI heads; got none"
            )
        if labeller.region_embedding != "teacher":
            raise ValueError(
                f"online pseudo-labels match the teacher's region embeddings; the labeller's "
                f"are {labeller.region_embedding!r} (MODEL.XPM.REGION_EMBEDDING 'teacher')"
            )
        if labeller.bert is not None:  # one BERT table, the student's own
            labeller.bert = self.bert
        self.teacher_roi_heads = copy.deepcopy(self.roi_heads).requires_grad_(False).eval()
        exclude_from_checkpoints(self, "teacher_roi_heads")

    def load_teacher(self, state: Dict[str, Tensor]) -> None:
        """Load a teacher's detector; every key but the student-only ones must match."""
        advice = "train the teacher with the same MODEL.RESNETS / ROI settings"
        try:
            result = self.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shapes that differ
            raise ValueError(
                f"MODEL.XPM.TEACHER_WEIGHTS is not a checkpoint of this XPM teacher: {e}; {advice}"
            ) from e
        missing = [k for k in result.missing_keys if not k.startswith(STUDENT_ONLY)]
        if missing or result.unexpected_keys:
            raise ValueError(
                "MODEL.XPM.TEACHER_WEIGHTS is not a checkpoint of this XPM teacher: missing "
                f"{missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}; {advice}"
            )

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: its norms keep their statistics
        self.proposal_generator.eval()
        if getattr(self, "online_labeller", None) is not None:
            self.teacher_roi_heads.eval()  # frozen: the official teacher heads run in eval
        return self

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def _proposals(self, images: ImageList, features, gt: Optional[List[Instances]]):
        """The frozen RPN's proposals: training mode (top-k of training, boxes of ``gt``
        added later by the heads) when ``gt`` is given, else test mode."""
        self.proposal_generator.train(gt is not None)
        try:
            proposals, _ = self.proposal_generator(images, features, gt)
        finally:
            self.proposal_generator.eval()
        return proposals

    def _freeze_noise_head(self) -> None:
        try:
            iteration = get_event_storage().iter
        except AssertionError:  # outside a trainer: nothing says which iteration this is
            return
        freeze_noise_head_at(self.roi_heads.mask_head.noise, iteration, self.noise_freeze_iter)

    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        """The ground-truth losses (seen names) and the pseudo losses (``*_pseudo``)."""
        self._freeze_noise_head()
        names = self.batch_vocabulary(batched_inputs)
        seen, seen_table = class_subset(names, self.seen_names, self.stuff_names)
        gt, pseudo = self.gt_targets(batched_inputs, names, seen_table)
        images = self.images(batched_inputs)
        with torch.no_grad():
            features = self.backbone(images.tensor)
        scale = self.logit_scale
        losses, _ = self.roi_heads.losses(
            features, self._proposals(images, features, gt), gt, self.text(seen), scale
        )
        proposals = None
        if self.online_labeller is not None:  # labelled now: the mapper read no store
            proposals = self._proposals(images, features, None)
            pseudo_names = self.pseudo_classes(batched_inputs)[0]
            made = online_pseudo_targets(
                self, images, features, proposals, batched_inputs, pseudo_names
            )
            # through the store-read targets' path (device, box convention), none of them gt
            _, pseudo = self.gt_targets([{"instances": t} for t in made], names, seen_table)
        losses.update(self.pseudo_losses(images, features, pseudo, batched_inputs, proposals))
        return losses

    def pseudo_classes(
        self, batched_inputs: List[dict]
    ) -> Tuple[Tuple[str, ...], Tuple[str, ...], Tensor, Optional[Tuple[str, ...]]]:
        """The names pseudo ``gt_classes`` index, the pseudo pass's class names, the table
        from the first into the second, and the background's name (None: logit 0).

        The classes index the inputs' ``"pseudo_vocabulary"`` (the LVIS names, XPM's caption
        vocabulary) where they have one, else their vocabulary (its things). With the LVIS
        quirk, LVIS id 0 is the background: left out of the names, its targets mapped to
        K (background) and its text the background's (``st_generalized_rcnn.py:257-258,
        329-330``; ``box_head/loss.py:156, 172``; ``mask_head/mask_head.py:13-29``).
        """
        key = "pseudo_vocabulary"
        lists = {tuple(x[key]) for x in batched_inputs if key in x}
        if len(lists) > 1 or (lists and any(key not in x for x in batched_inputs)):
            raise ValueError(
                "a training batch mixes pseudo vocabularies; every sample of an XPM dataset "
                "gets the same one from its mapper (MODEL.XPM.CAPTION_VOCABULARY)"
            )
        if not lists:
            if self.lvis_background_quirk:
                raise ValueError(
                    "MODEL.XPM.LVIS_BACKGROUND_QUIRK applies to the LVIS caption vocabulary, "
                    "but the inputs carry no 'pseudo_vocabulary': set MODEL.XPM."
                    "CAPTION_VOCABULARY 'lvis' (mapper 'ovseg_xpm_instance') or turn it off"
                )
            names = self.batch_vocabulary(batched_inputs)
            return (names, *class_subset(names, None, self.stuff_names), None)
        names = lists.pop()
        if not self.lvis_background_quirk:  # every LVIS name, as officially
            return (names, *class_subset(names, None, ()), None)
        if names[:1] != (LVIS_BACKGROUND_NAME,):
            raise ValueError(
                f"MODEL.XPM.LVIS_BACKGROUND_QUIRK makes the pseudo vocabulary's first name the "
                f"background, which must be LVIS id 0 {LVIS_BACKGROUND_NAME!r}, got "
                f"{list(names[:1])}; use the LVIS caption vocabulary or turn the quirk off"
            )
        table = torch.arange(len(names)) - 1
        table[0] = len(names) - 1  # background: K of the K = len(names) - 1 other names
        return names, names[1:], table, names[:1]

    def pseudo_losses(
        self,
        images: ImageList,
        features,
        pseudo: List[Instances],
        batched_inputs: List[dict],
        proposals: Optional[List[Instances]] = None,
    ) -> Dict[str, Tensor]:
        """The pseudo-label pass (images with pseudo instances only), reweighted; on the RPN's
        test-mode ``proposals`` (computed when not given)."""
        keys = ["loss_cls_pseudo", "loss_mask_pseudo"]
        keys += ["loss_box_reg_pseudo"] if self.pseudo_box_reg else []
        names, full, table, background = self.pseudo_classes(batched_inputs)
        idx = [i for i, t in enumerate(pseudo) if len(t)]
        if not idx:  # zero losses still in the graph, so every process reduces the same set
            zero = sum(p.sum() * 0.0 for p in self.roi_heads.parameters() if p.requires_grad)
            return {k: zero for k in keys}
        targets = [
            instances_to_device(
                remap_classes(pseudo[i], table, names, "pseudo-labels"), self.device
            )
            for i in idx
        ]  # mapped where they are (the host, for a mapper's), then copied
        if proposals is None:
            proposals = self._proposals(images, features, None)
        at = batch_index(idx, len(pseudo), images.tensor.device)
        sub = {k: v[at] for k, v in features.items()}
        losses, sigma = self.roi_heads.losses(
            sub,
            [proposals[i] for i in idx],
            targets,
            self.text(full),
            self.logit_scale,
            append_gt=False,
            box_reg=self.pseudo_box_reg,
            noisy_masks=True,
            background=None if background is None else self.text(background),
        )
        if sigma is not None and sigma.numel():
            self.last_mean_sigma.copy_(sigma.detach().mean())
        weight = pseudo_loss_weight(self.last_mean_sigma, self.pseudo_loss_scale)
        return {f"{k}_pseudo": v if "mask" in k else v * weight for k, v in losses.items()}
