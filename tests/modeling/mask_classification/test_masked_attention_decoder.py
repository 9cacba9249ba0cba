"""The masked-attention decoder: shapes, pluggable class heads, the attention mask."""

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg

from ovseg.config import add_ovseg_config
from ovseg.modeling.mask_classification import (
    LinearClassHead,
    MaskedAttentionDecoder,
    TextCosineClassHead,
)


def _decoder(class_head, dec_layers=3, **kw):
    return MaskedAttentionDecoder(
        16,
        class_head=class_head,
        hidden_dim=16,
        num_queries=5,
        nheads=2,
        dim_feedforward=32,
        dec_layers=dec_layers,
        pre_norm=False,
        mask_dim=8,
        **kw,
    )


def _inputs(bs=2):
    torch.manual_seed(1)
    x = [torch.randn(bs, 16, s, s) for s in (2, 4, 8)]
    return x, torch.randn(bs, 8, 16, 16)


def test_linear_head_outputs_and_aux_count():
    torch.manual_seed(0)
    dec = _decoder(LinearClassHead(16, num_classes=4), dec_layers=4)
    x, mf = _inputs()
    out = dec(x, mf)
    assert out["pred_logits"].shape == (2, 5, 5)
    assert out["pred_masks"].shape == (2, 5, 16, 16)
    assert out["query_features"].shape == (2, 5, 16)
    # the learnable queries' prediction + one per layer but the last
    assert len(out["aux_outputs"]) == 4
    assert out["aux_outputs"][0]["pred_masks"].shape == (2, 5, 16, 16)
    names = {n for n, _ in dec.named_parameters()}
    assert "class_embed.weight" in names  # Mask2Former's key
    assert "transformer_cross_attention_layers.0.multihead_attn.in_proj_weight" in names


def test_text_cosine_head_gets_the_text_features_through_forward():
    torch.manual_seed(0)
    head = TextCosineClassHead(hidden_dim=16, embed_dim=6, embed_hidden_dim=12, num_layers=2)
    dec = _decoder(head)
    text = F.normalize(torch.randn(4, 6), dim=-1)  # 3 classes + no object
    x, mf = _inputs()
    out = dec(x, mf, text_features=text)
    assert out["pred_logits"].shape == (2, 5, 4)
    assert out["pred_logits"].abs().max() <= 100.0 + 1e-4
    emb = F.normalize(head.layers[1](F.relu(head.layers[0](out["query_features"]))), dim=-1)
    torch.testing.assert_close(out["pred_logits"], 100 * emb @ text.t())
    assert "class_embed.layers.1.weight" in {n for n, _ in dec.named_parameters()}  # FreeSeg's key
    with pytest.raises(ValueError, match="text_features"):
        head(out["query_features"], torch.zeros(4, 5))


def test_queries_attend_only_inside_their_previous_masks():
    # every query's first prediction covers the left half of the level-0 map, so after one
    # layer the queries ignore the right half and depend on the left half
    torch.manual_seed(0)
    dec = _decoder(None, dec_layers=1).eval()
    with torch.no_grad():
        last = dec.mask_embed.layers[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[0] = 5.0
    x = [torch.randn(1, 16, 8, 8) for _ in range(3)]
    mf = torch.zeros(1, 8, 8, 8)
    mf[0, 0, :, :4], mf[0, 0, :, 4:] = 1.0, -1.0
    base = dec(x, mf)["query_features"]
    right = [t.clone() for t in x]
    right[0][..., 4:] += 10 * torch.randn_like(right[0][..., 4:])
    torch.testing.assert_close(dec(right, mf)["query_features"], base)
    left = [t.clone() for t in x]
    left[0][..., :4] += 10 * torch.randn_like(left[0][..., :4])
    assert not torch.allclose(dec(left, mf)["query_features"], base)


def test_empty_masks_attend_everywhere_and_stay_finite():
    torch.manual_seed(0)
    dec = _decoder(LinearClassHead(16, 2))
    with torch.no_grad():
        dec.mask_embed.layers[-1].weight.zero_()
        dec.mask_embed.layers[-1].bias.fill_(-5.0)
    x, _ = _inputs(1)
    out = dec(x, torch.ones(1, 8, 16, 16))
    assert torch.isfinite(out["query_features"]).all()


def test_from_config():
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 16
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 32
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 2
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 8
    dec = MaskedAttentionDecoder(cfg, 16, None)
    assert dec.num_layers == 2 and dec.num_queries == 100 and dec.num_heads == 8
    with pytest.raises(ValueError, match="dec_layers"):
        _decoder(None, dec_layers=0)
