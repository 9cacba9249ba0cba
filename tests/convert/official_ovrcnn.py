"""A state dict in the layout of OVR-CNN's caption-pretraining checkpoint (alirezazareian/
ovr-cnn @c904af7, MMSS-GCNN of configs/mmss_v07.yaml: the R-50-C5 body ``backbone.body``,
the frozen BERT ``language_backbone.body``, ``mmss_heads.{GroundingHead, TransformerHead}``
with the tied vision-to-language projection and the transformer head's own copy of the BERT)
at a tiny config's widths, random values; saved by DistributedDataParallel (``module.``)."""

from __future__ import annotations

import torch
from official_xpm import _conv, _norm, _stage


def official_ovrcnn_state(cfg, bert_table, seed: int = 0) -> dict:
    """OVR-CNN's pre-training state dict at ``cfg``'s widths, its BERT word embeddings
    ``bert_table`` (V, D); keys as its checkpointer saves a DDP model (``module.``)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict = {}
    stem = cfg.MODEL.RESNETS.STEM_OUT_CHANNELS
    _conv(state, "backbone.body.stem.conv1.weight", (stem, 3, 7, 7), gen)
    _norm(state, "backbone.body.stem.bn1.", stem, gen)
    ch = stem
    for i in (1, 2, 3, 4):  # R-50-C5 (mmss_v07.yaml:10)
        ch = _stage(state, "backbone.body.", i, cfg, ch, gen)
    emb = bert_table.shape[1]
    bert = {
        "embeddings": bert_table.clone(),
        "bert_model.embeddings.word_embeddings.weight": bert_table.clone(),
        "bert_model.embeddings.LayerNorm.weight": torch.ones(emb),
        "bert_model.encoder.layer.0.attention.self.query.weight": torch.randn(emb, emb),
        "bert_model.pooler.dense.weight": torch.randn(emb, emb),
    }
    for k, v in bert.items():  # one module under two names (mmss_gcnn.py:29-35)
        state[f"language_backbone.body.{k}"] = v
        state[f"mmss_heads.TransformerHead.backbone.{k}"] = v.clone()
    _conv(state, "mmss_heads.GroundingHead.v2l_projection.weight", (emb, ch), gen)
    _conv(state, "mmss_heads.GroundingHead.v2l_projection.bias", (emb,), gen)
    for p in ("weight", "bias"):  # tied (mmss_heads/__init__.py:25-36)
        key = f"mmss_heads.GroundingHead.v2l_projection.{p}"
        state[key.replace("GroundingHead", "TransformerHead")] = state[key].clone()
    head = {
        "visual_emb.image_embeddings.weight": (emb, emb),
        "visual_emb.LayerNorm.weight": (emb,),
        "encoder.layer.0.output.dense.weight": (emb, emb),
        "pooler.dense.weight": (emb, emb),
        "heads.predictions.bias": (bert_table.shape[0],),
        "heads.bi_seq_relationship.weight": (2, emb),
    }
    for k, shape in head.items():
        _conv(state, f"mmss_heads.TransformerHead.{k}", shape, gen)
    return {f"module.{k}": v for k, v in state.items()}


def release_load(model_state: dict, saved: dict, replace: dict) -> dict:
    """The official loader written out (maskrcnn_benchmark/utils/model_serialization.py:10-89
    with utils/checkpoint.py:118-122's ``replace``): ``module.`` stripped from every saved
    key when all have it, each ``replace`` substring replaced, then each model key takes the
    saved tensor whose renamed key is its longest suffix; the rest keep the model's.

    Returns:
        dict: model key -> the saved key it is loaded from (keys loaded from nothing left out).
    """
    keys = sorted(saved)
    if all(k.startswith("module.") for k in keys):
        keys = [k.replace("module.", "") for k in keys]
    renamed = []
    for key in keys:
        new = key
        for old, sub in replace.items():
            if old in key:
                new = new.replace(old, sub)
        renamed.append(new)
    loaded = {}
    for key in sorted(model_state):
        sizes = [len(r) if key.endswith(r) else 0 for r in renamed]
        best = max(range(len(sizes)), key=lambda i: (sizes[i], -i))
        if sizes[best]:
            loaded[key] = keys[best]
    return loaded
