"""XPM's pseudo instances: every caption noun gets the teacher proposal that matches it best.

Follows XPM's pseudo-labelling (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423,
``maskrcnn_benchmark/modeling/detector/st_generalized_rcnn.py:218-275``), re-written and run
once, offline (the teacher is frozen, so it is the same labels):

- nouns: the class phrases of ALL of an image's captions
  (:class:`~ovseg.modeling.xpm.CaptionNounMatcher`, ``coco_cap_det.py:131-140``: the
  matched synonyms' lemmas, ``parser.py:57-74``, joined by "/" and split again, :320), each
  distinct phrase once with its class of the full vocabulary (seen and unseen);
- regions: one embedding per proposal; ``"teacher"``: the XPM teacher's ``pred_embeddings``
  (its box predictor's projection of the avg-pooled RoI feature of each RPN proposal,
  :219-229; every proposal a candidate, as officially); ``"crop"`` / ``"pool"`` (the
  default): :meth:`~ovseg.clip.CLIPTeacher.region_embeddings` of the proposal's mask
  (proposals with an empty mask are skipped): CLIP's image side standing in for the
  teacher's own alignment;
- text and product, two spaces:

  * BERT (``bert`` given, the teacher's :class:`~ovseg.modeling.xpm.bert.
    BertClassEmbeddings`, with ``"teacher"`` regions): the paper's. A noun is the mean of
    BERT's input word-piece embeddings over its non-special tokens, L2-normalised
    (``extract_emb``, :202-209, :243); the region embedding is the raw projection, not
    normalised; the product is their raw dot product (:245);
  * CLIP (ovseg's variant): a noun is CLIP's prompt-ensembled ``encode_text`` (of the noun,
    or of its class name with ``text="class"``), both sides L2-normalised: a cosine;

- per noun, the proposal with the highest product (:247) gives the pseudo box (the RoI
  head's refined box of that proposal, :222, :249) and the pseudo mask (the mask head at
  that box, threshold 0.5, :264-272); score = sigmoid of the product (:255). No score
  threshold and no NMS by default (as XPM); the score is kept for an optional cut.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from detectron2.structures import Instances

from ..vocab import normalize_name
from .lazy_masks import LazyMasks, mask_probabilities

__all__ = [
    "REGION_EMBEDDINGS",
    "PSEUDO_TEXTS",
    "NounMatches",
    "PseudoInstance",
    "PseudoInstanceLabeller",
    "decode_mask",
    "encode_mask",
    "proposals_at_size",
]

REGION_EMBEDDINGS = ("crop", "pool", "teacher")
PSEUDO_TEXTS = ("noun", "class")


def encode_mask(mask: np.ndarray) -> Dict[str, Any]:
    """A (H, W) boolean mask as COCO RLE with ``counts`` a str (JSON-able)."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """The (H, W) boolean mask of a COCO RLE written by :func:`encode_mask`."""
    from pycocotools import mask as mask_util

    counts = rle["counts"]
    data = {"size": list(rle["size"]), "counts": counts.encode("ascii")}
    return mask_util.decode(data).astype(bool)


@dataclass(frozen=True)
class PseudoInstance:
    """One noun's pseudo instance.

    Attributes:
        noun (str): the caption phrase (space-joined lemmas, e.g. ``"teddy bear"``).
        category (str): its class name in the labeller's vocabulary.
        category_id (int): the index of ``category`` in that vocabulary.
        box (tuple): the proposal's box, XYXY in pixels of the original image.
        mask (dict): the proposal's mask (probability >= the mask threshold) as COCO RLE.
        cosine (float): the product of the noun's text and the proposal's region embedding
            (a cosine in CLIP's space; the raw dot product in BERT's).
        score (float): sigmoid of it, XPM's pseudo-label score.
        proposal (int): the proposal's index in the teacher's output.
    """

    noun: str
    category: str
    category_id: int
    box: Tuple[float, float, float, float]
    mask: Dict[str, Any]
    cosine: float
    score: float
    proposal: int

    def to_json(self) -> Dict[str, Any]:
        return {**asdict(self), "box": list(self.box)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PseudoInstance:
        fields = set(cls.__dataclass_fields__)
        missing = sorted(fields - set(data))
        if missing:
            raise ValueError(f"a pseudo instance record lacks {missing}: {dict(data)!r}")
        box = tuple(float(v) for v in data["box"])
        if len(box) != 4:
            raise ValueError(f"pseudo instance box {data['box']!r} is not XYXY")
        return cls(**{**{k: data[k] for k in fields}, "box": box})


def proposals_at_size(proposals: Instances, height: int, width: int) -> Instances:
    """The proposals moved to (height, width): boxes scaled, mask probabilities resized
    bilinearly. Unchanged when they already are at that size.

    Args:
        proposals (Instances): ``pred_boxes`` (Boxes), ``pred_masks`` ((N, H', W') floats in
            [0, 1], or (N, 1, H', W'), or a :class:`LazyMasks`: resized when computed),
            ``scores`` and optionally ``pred_embeddings`` ((N, D), carried over).
        height, width (int): the original image size.
    """
    masks = proposals.pred_masks
    lazy = isinstance(masks, LazyMasks)
    if not lazy and masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    shape = (len(masks), *masks.image_size) if lazy else tuple(masks.shape)
    if len(shape) != 3 or tuple(shape[-2:]) != tuple(proposals.image_size):
        raise ValueError(
            f"proposal pred_masks have shape {shape}; expected (N, H, W) mask probabilities "
            f"at the proposals' image size {proposals.image_size}"
        )
    out = Instances((height, width))
    h0, w0 = proposals.image_size
    boxes = proposals.pred_boxes.clone()
    if (h0, w0) != (height, width):
        boxes.scale(width / w0, height / h0)
        if lazy:
            masks = masks.resized(height, width)
        else:
            masks = F.interpolate(masks[None].float(), size=(height, width), mode="bilinear")[0]
    out.pred_boxes = boxes
    out.pred_masks = masks if lazy else masks.float()
    ones = boxes.tensor.new_ones(len(boxes))
    out.scores = proposals.scores if proposals.has("scores") else ones
    if proposals.has("pred_embeddings"):
        out.pred_embeddings = proposals.pred_embeddings
    return out


@dataclass
class NounMatches:
    """The W kept nouns of an image and their best proposals (:meth:`PseudoInstanceLabeller.
    match`).

    Attributes:
        nouns (list[tuple[str, int]]): (phrase, vocabulary index) per noun.
        proposals (Tensor): (W,) long, the winning proposal of each.
        boxes (Tensor): (W, 4) their boxes (XYXY, the proposals' image).
        masks (Tensor): (W, H, W') bool, their masks (probability >= the mask threshold).
        cosine (Tensor): (W,) the products; ``scores`` (W,) their sigmoids.
    """

    nouns: List[Tuple[str, int]]
    proposals: Tensor
    boxes: Tensor
    masks: Tensor
    cosine: Tensor
    scores: Tensor


class PseudoInstanceLabeller:
    """Caption nouns -> each one's best-matching proposal, as a :class:`PseudoInstance`."""

    def __init__(
        self,
        clip,
        matcher,
        vocabulary: Sequence[str],
        *,
        templates: Sequence[str],
        region_embedding: str = "crop",
        text: str = "noun",
        mask_threshold: float = 0.5,
        score_threshold: float = 0.0,
        bert=None,
    ):
        """
        Args:
            clip (CLIPTeacher): text and region embeddings (None with ``bert``: unused).
            matcher (CaptionNounMatcher): finds class phrases in captions; each of its class
                names must be in ``vocabulary``.
            vocabulary: the full vocabulary (seen and unseen names) pseudo classes index.
            templates: prompt templates of the text embeddings (ensembled).
            region_embedding (str): "crop" (masked crop through CLIP's image encoder),
                "pool" (mask pooling of CLIP's dense features; cheaper) or "teacher" (the
                proposals' ``pred_embeddings``, as XPM matches its detector's).
            text (str): "noun" (embed the caption phrase, as XPM) or "class" (its class name).
            mask_threshold (float): mask probability at and above which a pixel is inside.
            score_threshold (float): pseudo instances scoring below are dropped (0: none).
            bert (BertClassEmbeddings, optional): embed the texts in the teacher's BERT space
                and score them by the raw dot product with the proposals' unnormalised
                ``pred_embeddings`` (XPM's own matching; needs ``region_embedding="teacher"``).
        """
        if region_embedding not in REGION_EMBEDDINGS:
            raise ValueError(
                f"region embedding {region_embedding!r} is not one of {list(REGION_EMBEDDINGS)}"
            )
        if text not in PSEUDO_TEXTS:
            raise ValueError(f"pseudo-label text {text!r} is not one of {list(PSEUDO_TEXTS)}")
        if bert is not None and region_embedding != "teacher":
            raise ValueError(
                f"BERT text embeddings are matched to the teacher's BERT-space region "
                f"embeddings; region embedding {region_embedding!r} is CLIP's image side: use "
                "'teacher', or CLIP text (no BERT) with 'crop' / 'pool'"
            )
        if not 0.0 < mask_threshold <= 1.0:
            raise ValueError(f"mask threshold {mask_threshold} is not in (0, 1]")
        index = {normalize_name(n): i for i, n in enumerate(vocabulary)}
        matched = sorted(set(matcher.phrases.values()))
        missing = [
            matcher.class_names[c] for c in matched
            if normalize_name(matcher.class_names[c]) not in index
        ]  # fmt: skip
        if missing:
            raise ValueError(
                f"the caption matcher names classes {missing} that are not in the pseudo-label "
                f"vocabulary {list(vocabulary)}; give the full vocabulary (seen and unseen)"
            )
        if bert is None and clip is None:
            raise ValueError("the CLIP-space labeller needs a CLIP teacher (clip is None)")
        self.clip = clip
        self.bert = bert
        self.matcher = matcher
        self.vocabulary = tuple(vocabulary)
        self._to_vocab = {
            cid: index.get(normalize_name(n), -1) for cid, n in enumerate(matcher.class_names)
        }
        self.templates = tuple(templates)
        self.region_embedding = region_embedding
        self.text = text
        self.mask_threshold = float(mask_threshold)
        self.score_threshold = float(score_threshold)

    @property
    def needs_every_mask(self) -> bool:
        """Whether every proposal's mask is read ("crop" / "pool" embed the masked pixels);
        with "teacher" only the chosen proposals' are, which a proposer may give lazily."""
        return self.region_embedding != "teacher"

    def nouns(self, captions: Sequence[str]) -> List[Tuple[str, int]]:
        """(phrase, vocabulary index) of every class phrase in the captions."""
        return [(p, self._to_vocab[c]) for p, c in self.matcher(captions).nouns]

    def text_embeddings(self, nouns: Sequence[Tuple[str, int]]) -> Tensor:
        """(W, D) normalised text embeddings of the nouns (or of their class names): CLIP's
        prompt-ensembled, or with ``bert`` the official ``extract_emb`` (no prompt)."""
        texts = [p if self.text == "noun" else self.vocabulary[c] for p, c in nouns]
        if self.bert is not None:
            return F.normalize(self.bert(texts), dim=-1)
        return self.clip.encode_text(texts, self.templates)

    @torch.no_grad()
    def __call__(
        self, image: Tensor, captions: Sequence[str], proposals: Instances
    ) -> List[PseudoInstance]:
        """The pseudo instances of one image.

        Args:
            image (Tensor): (3, H, W) RGB in [0, 255] at the proposals' image size.
            captions: all the image's captions.
            proposals (Instances): the teacher's, at (H, W): ``pred_boxes``, ``pred_masks``
                ((N, H, W) probabilities, or a :class:`LazyMasks`: with "teacher" only the
                chosen proposals' are computed; "crop" / "pool" compute all).

        Returns:
            list[PseudoInstance]: one per noun (fewer with a score threshold), in noun order.
        """
        found = self.match(image, captions, proposals)
        if found is None:
            return []
        boxes, masks = found.boxes.detach().cpu(), found.masks.cpu().numpy()
        return [
            PseudoInstance(
                noun=noun,
                category=self.vocabulary[cid],
                category_id=int(cid),
                box=tuple(float(v) for v in boxes[w]),  # type: ignore[arg-type]
                mask=encode_mask(masks[w]),
                cosine=float(found.cosine[w]),
                score=float(found.scores[w]),
                proposal=int(found.proposals[w]),
            )
            for w, (noun, cid) in enumerate(found.nouns)
        ]

    @torch.no_grad()
    def match(
        self,
        image: Tensor,
        captions: Sequence[str],
        proposals: Instances,
        nouns: Optional[List[Tuple[str, int]]] = None,
    ) -> Optional[NounMatches]:
        """Each noun's best proposal as tensors (what :meth:`__call__` records, which the
        XPM student's online pseudo-labels use as they are); None without nouns or
        proposals. Arguments as :meth:`__call__`'s; ``nouns``: :meth:`nouns` of the
        captions when the caller has them already."""
        if tuple(image.shape[-2:]) != tuple(proposals.image_size):
            raise ValueError(
                f"image {tuple(image.shape)} and proposals {proposals.image_size} differ in size"
            )
        nouns = self.nouns(captions) if nouns is None else nouns
        inside = None
        if self.region_embedding == "teacher":  # every proposal, as XPM
            kept = torch.arange(len(proposals), device=proposals.pred_boxes.device)
        else:  # a crop or a pooled region needs pixels: every proposal's mask
            inside = mask_probabilities(proposals.pred_masks) >= self.mask_threshold
            kept = torch.nonzero(inside.flatten(1).any(dim=1)).flatten()
        if not nouns or len(kept) == 0:
            return None
        regions = self.regions(image, proposals, None if inside is None else inside[kept], kept)
        texts = self.text_embeddings(nouns).to(regions)
        cosine, best = (texts @ regions.T).max(dim=1)  # (W,): each noun's best proposal
        scores = torch.sigmoid(cosine)
        winners = kept[best.to(kept.device)]
        masks = self.winner_masks(proposals.pred_masks, inside, winners)
        keep = [w for w in range(len(nouns)) if float(scores[w]) >= self.score_threshold]
        rows = torch.tensor(keep, dtype=torch.long)
        return NounMatches(
            nouns=[nouns[w] for w in keep],
            proposals=winners[rows.to(winners.device)],
            boxes=proposals.pred_boxes.tensor[winners][rows.to(winners.device)],
            masks=masks[rows.to(masks.device)],
            cosine=cosine[rows.to(cosine.device)],
            scores=scores[rows.to(scores.device)],
        )

    def winner_masks(self, masks, inside, winners: Tensor) -> Tensor:
        """(W, H, W') bool masks of the ``winners`` (proposal indices, one per noun): from
        ``inside`` when every mask was thresholded, else only the winners' are computed (a
        :class:`LazyMasks` runs the mask head at their boxes alone, XPM's mask pass,
        st_generalized_rcnn.py:264-272)."""
        if inside is not None:
            return inside[winners]
        unique, back = torch.unique(winners, return_inverse=True)
        return (mask_probabilities(masks, unique) >= self.mask_threshold)[back]

    def regions(
        self, image: Tensor, proposals: Instances, masks: Optional[Tensor], kept: Tensor
    ) -> Tensor:
        """(R, D) embeddings of the ``kept`` proposals (``masks``: theirs, bool; None with
        "teacher", which does not read them): normalised, or
        with ``bert`` the teacher's raw ones (the official ``emb_pred`` output)."""
        if self.region_embedding != "teacher":
            return self.clip.region_embeddings(
                image[None].float(), [masks], mode=self.region_embedding
            )[0]
        if not proposals.has("pred_embeddings"):
            raise ValueError(
                "MODEL.XPM.REGION_EMBEDDING 'teacher' matches nouns to the proposals' "
                "pred_embeddings, which this proposer does not give; use the XPM teacher "
                "(XPMTeacher.propose) or 'crop' / 'pool'"
            )
        regions = proposals.pred_embeddings[kept].float()
        return regions if self.bert is not None else F.normalize(regions, dim=-1)

    def settings(self) -> Dict[str, Any]:
        """What decides this labeller's output besides its models (for fingerprints); with
        ``bert``, also its text space (the keys of CLIP-space labellers are as before)."""
        out = {
            "region_embedding": self.region_embedding,
            "text": self.text,
            "templates": list(self.templates),
            "mask_threshold": self.mask_threshold,
            "score_threshold": self.score_threshold,
            "matcher_classes": list(self.matcher.class_names),
            "matcher_phrases": sorted(
                [" ".join(k), self.vocabulary[self._to_vocab[v]]]
                for k, v in self.matcher.phrases.items()
            ),
        }
        if self.bert is not None:  # BERT nouns, raw teacher regions, raw dot product
            out["text_space"] = {"bert": self.bert.fingerprint(), "product": "dot"}
        return out
