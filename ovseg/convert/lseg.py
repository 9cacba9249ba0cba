# Follows the official LSeg checkpoints' names (isl-org/lang-seg @bb00b21:
# modules/models/lseg_net.py LSeg, lseg_net_zs.py LSegRN, lseg_vit.py _make_vit_b16_backbone,
# lseg_blocks.py _make_scratch / FeatureFusionBlock_custom), re-written.
"""Official LSeg Lightning checkpoints (``demo_e200.ckpt``, the ADE20K and fold models) into
ovseg's ``LSeg``.

A Lightning checkpoint's ``state_dict`` holds the network under ``net.``; what becomes of it:

- ``net.clip_pretrained.*``: CLIP ViT-B/32 (text and image towers), frozen in use; dropped
  and compared with MODEL.CLIP's teacher (ovseg embeds the text with it).
- ViT encoders: ``net.pretrained.model.{cls_token, pos_embed, patch_embed.proj, blocks.<i>}``
  -> ``backbone.vit.*`` (blocks up to the last hook); the blocks after it, the final
  ``norm`` and the ImageNet ``head`` are dropped: the official forward reads the hooked
  blocks' outputs before ``norm`` and never uses the classifier.
  ``net.pretrained.act_postprocess<i>.0.project.0`` (readout "project") ->
  ``backbone.readouts.<i-1>.project.0``; ``act_postprocess<i>.3`` (1x1 conv) and ``.4``
  (resampling) -> ``decoder.reassemble.<i-1>.0`` / ``.1``.
- ResNet encoders (``clip_resnet101``): ``net.pretrained.layer1.{0, 1, 4}`` (conv1, bn1,
  layer1) and ``layer2..4`` -> ``backbone.resnet.{conv1, bn1, layer1..4}``.
- ``net.scratch.layer<i>_rn`` -> ``decoder.project.<i-1>``; ``net.scratch.refinenet<i>.
  {resConfUnit1, resConfUnit2, out_conv}`` -> ``decoder.fusion.<i-1>.{skip_unit, unit,
  out_conv}`` (``bn1``/``bn2`` -> ``norm1``/``norm2``); ``refinenet4.resConfUnit1`` is
  dropped: the coarsest block has no skip input, the official forward never runs it.
- ``net.scratch.head1`` -> ``decoder.head``; ``net.scratch.head_block.depthwise.depthwise``
  (spatial regularisation, arch_option 1 or 2) -> ``spatial_reg.conv``.
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Tuple

from torch import Tensor

from ..utils.config_keys import config_value
from .core import ConversionError, ConversionReport, Rule, apply_rules, require

__all__ = ["convert_lseg", "lseg_rules", "lseg_settings"]

METHOD = "LSeg"
_CLIP = "frozen CLIP ViT-B/32 (ovseg embeds the text with MODEL.CLIP's teacher)"
_UNUSED_TAIL = "ViT final norm / classifier head / blocks after the last hook: never used"
_NO_SKIP = "the coarsest fusion block's skip unit: the official forward never runs it"
_RCU = r"net\.scratch\.refinenet([1-4])\.resConfUnit([12])\."
_NEEDED = {
    r"decoder\.head\.weight": "net.scratch.head1.weight",
    r"decoder\.project\.0\.weight": "net.scratch.layer1_rn.weight",
    r"decoder\.fusion\.0\.unit\.conv1\.weight": "net.scratch.refinenet1.resConfUnit2.*",
}


def _minus_one(m: re.Match) -> str:
    return str(int(m.group(1)) - 1)


def _unit(name: str) -> str:
    return {"bn1": "norm1", "bn2": "norm2"}.get(name, name)


def lseg_rules(last_hook: int) -> List[Rule]:
    """The rules for an official model whose last hooked ViT block is ``last_hook``."""
    used_blocks = "|".join(str(i) for i in range(last_hook + 1))
    return [
        Rule(r"net\.clip_pretrained\.(.+)", why=_CLIP, teacher=r"\1"),
        Rule(
            rf"net\.pretrained\.model\.(cls_token|pos_embed|patch_embed\..+|blocks\.({used_blocks})\..+)",
            r"backbone.vit.\1",
        ),
        Rule(r"net\.pretrained\.model\.(norm|head|blocks\.\d+)\..+", why=_UNUSED_TAIL),
        Rule(r"net\.pretrained\.layer1\.0\.(.+)", r"backbone.resnet.conv1.\1"),
        Rule(r"net\.pretrained\.layer1\.1\.(.+)", r"backbone.resnet.bn1.\1"),
        Rule(r"net\.pretrained\.layer1\.4\.(.+)", r"backbone.resnet.layer1.\1"),
        Rule(r"net\.pretrained\.layer([2-4])\.(.+)", r"backbone.resnet.layer\1.\2"),
        Rule(r"net\.scratch\.refinenet4\.resConfUnit1\..+", why=_NO_SKIP),
        Rule(r"net\.scratch\.head1\.(weight|bias)", r"decoder.head.\1"),
        Rule(
            r"net\.scratch\.head_block\.depthwise\.depthwise\.(weight|bias)", r"spatial_reg.conv.\1"
        ),
    ]


def _indexed(state: Dict[str, Tensor], report: ConversionReport) -> Dict[str, Tensor]:
    """Pop the keys whose ovseg index is the official one minus one; return them renamed."""
    patterns = [
        (
            r"net\.pretrained\.act_postprocess([1-4])\.0\.project\.0\.(.+)",
            "backbone.readouts.{i}.project.0.{rest}",
        ),
        (r"net\.pretrained\.act_postprocess([1-4])\.3\.(.+)", "decoder.reassemble.{i}.0.{rest}"),
        (r"net\.pretrained\.act_postprocess([1-4])\.4\.(.+)", "decoder.reassemble.{i}.1.{rest}"),
        (r"net\.scratch\.layer([1-4])_rn\.(.+)", "decoder.project.{i}.{rest}"),
        (r"net\.scratch\.refinenet([1-4])\.out_conv\.(.+)", "decoder.fusion.{i}.out_conv.{rest}"),
    ]
    out: Dict[str, Tensor] = {}
    for key in sorted(state):
        m = re.fullmatch(_RCU + r"(conv1|conv2|bn1|bn2)\.(.+)", key)
        if m and not (m.group(1) == "4" and m.group(2) == "1"):
            unit = "skip_unit" if m.group(2) == "1" else "unit"
            new = f"decoder.fusion.{int(m.group(1)) - 1}.{unit}.{_unit(m.group(3))}.{m.group(4)}"
        else:
            found = [(p, t, m) for p, t in patterns if (m := re.fullmatch(p, key))]
            if not found:
                continue
            _, template, m = found[0]
            new = template.format(i=_minus_one(m), rest=m.group(2))
        out[new] = state.pop(key)
        report.used[key] = new
    return out


def _strip_net(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Lightning's ``net.`` prefix is kept; a bare network's state dict gets it."""
    if any(k.startswith("net.") for k in state):
        return dict(state)
    return {f"net.{k}": v for k, v in state.items()}


def convert_lseg(state: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """An official LSeg state dict -> ovseg's, and the account of every tensor.

    Args:
        state (Mapping[str, Tensor]): the Lightning checkpoint's ``state_dict`` (``net.*``)
            or the bare network's.

    Returns:
        tuple: the ovseg state dict (backbone, decoder, spatial regularisation), the report.

    Raises:
        ConversionError: naming keys ovseg has no place for, or missing parts.
    """
    report = ConversionReport(METHOD)
    state = _strip_net(state)
    hooks = sorted(
        int(m.group(1))
        for k in state
        if (m := re.fullmatch(r"net\.pretrained\.model\.blocks\.(\d+)\.norm1\.weight", k))
    )
    out = _indexed(state, report)
    out.update(apply_rules(state, lseg_rules(hooks[-1] if hooks else -1), report))
    require(out, _NEEDED, METHOD)
    if hooks:
        kind = f"a {len(hooks)}-block ViT (hooks: MODEL.VIT_BACKBONE.OUT_INDICES)"
    elif "backbone.resnet.conv1.weight" in out:
        kind = "a ResNet (MODEL.BACKBONE.NAME build_torchvision_resnet_backbone)"
    else:
        raise ConversionError(f"{METHOD}: neither a ViT nor a ResNet image encoder found")
    report.info.append(f"image encoder: {kind}")
    if "spatial_reg.conv.weight" in out:
        report.info.append(
            "spatial regularisation block (official arch_option 1 = 'bottleneck', 2 = "
            "'depthwise': set MODEL.LSEG.SPATIAL_REG and SPATIAL_REG_DEPTH to the run's)"
        )
    return out, report


def lseg_settings(cfg, model, converted: Mapping[str, Tensor], report: ConversionReport) -> None:
    """Refuse a backbone that cannot hold the official weights; note settings under which
    they compute otherwise than the official model."""
    resnet = "backbone.resnet.conv1.weight" in converted
    want = "build_torchvision_resnet_backbone" if resnet else "build_timm_vit_backbone"
    if cfg.MODEL.BACKBONE.NAME != want:
        raise ConversionError(
            f"{METHOD}: the checkpoint's image encoder needs MODEL.BACKBONE.NAME {want!r}, "
            f"the config has {cfg.MODEL.BACKBONE.NAME!r}"
        )
    if resnet and list(cfg.MODEL.DPT.REASSEMBLE_CHANNELS):
        raise ConversionError(
            f"{METHOD}: the official ResNet maps enter the 3x3 layer<i>_rn convs directly: "
            "set MODEL.DPT.REASSEMBLE_CHANNELS []"
        )
    official = {
        ("MODEL.VIT_BACKBONE.POS_EMBED_INTERP", "bilinear"): not resnet,
        ("MODEL.CLIP.TEMPLATES", "name"): True,
    }
    for (key, value), applies in official.items():
        node = config_value(cfg, key)
        if applies and node != value:
            report.notes.append(f"{key} {node!r}: the official model has {value!r}")
    if abs(float(model.logit_scale) - 1 / 0.07) > 1e-3:
        report.notes.append("the logit scale is not the official 1/0.07 (MODEL.OVSEG.LOGIT_SCALE)")
    report.notes.append(
        "the official model multiplies pixel and text embeddings in fp16 (logits differ by "
        "about 1e-3 relative); ovseg in float32"
    )
