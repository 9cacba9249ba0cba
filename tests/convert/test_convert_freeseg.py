"""ovseg.convert for FreeSeg: a state dict with the official names and shapes (listed from the
official modules at tiny widths, random values, CLIP's the tiny teacher's) converts into the
COCO paper config's model (R101, DeepLab stem) and loads strictly, every tensor accounted
for and in its place; unknown, refused, missing and misshapen keys fail by name; the command
line reads detectron2's checkpoint format."""

from __future__ import annotations

import pytest
import torch
from convert_utils import TINY_VIT, build, tiny_opts
from official_freeseg import official_freeseg_state
from ovseg_testing import CONFIGS, PANOPTIC_OPTS, SMALL_OPTS

from ovseg.convert import ConversionError, convert_checkpoint
from ovseg.convert.command import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COCO = CONFIGS / "coco/freeseg/freeseg_r101c_alltask_60k_bs32.yaml"
# the paper config at tiny widths, its R101 with the DeepLab stem kept
R101C = [
    *SMALL_OPTS["FreeSeg"],
    "MODEL.RESNETS.DEPTH", "101",
    "MODEL.RESNETS.STEM_TYPE", "deeplab",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
    "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 2, 4]",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", "64",
    *PANOPTIC_OPTS,
]  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(cfg, model) of the COCO paper config on the tiny CLIP."""
    return build(COCO, tiny_opts(TINY_VIT, tmp_path_factory.mktemp("clip_cache")) + R101C)


@pytest.fixture(scope="module")
def official(built):
    cfg, model = built
    return official_freeseg_state(cfg, model.teacher.model.state_dict())


def test_every_official_tensor_is_placed_and_loads_strictly(built, official):
    cfg, model = built
    out, report = convert_checkpoint("freeseg", official, cfg, model=model)
    assert set(report.used) | set(report.dropped) == set(official)
    assert not set(report.used) & set(report.dropped)
    model.load_state_dict(out, strict=True)
    state = model.state_dict()
    pairs = {
        "backbone.stem.conv3.weight": "backbone.stem.conv3.weight",  # the DeepLab stem
        "backbone.res4.22.conv3.weight": "backbone.res4.22.conv3.weight",  # R101: 23 blocks
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.value_proj.weight": (
            "pixel_decoder.transformer.layers.0.self_attn.value_proj.weight"
        ),
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight": "pixel_decoder.input_proj.0.0.weight",
        "sem_seg_head.pixel_decoder.adapter_1.norm.weight": "pixel_decoder.adapter_1.norm.weight",
        "sem_seg_head.predictor.class_embed.layers.1.weight": "decoder.class_embed.layers.1.weight",
        "sem_seg_head.predictor.transformer_cross_attention_layers.2.multihead_attn."
        "in_proj_weight": "decoder.transformer_cross_attention_layers.2.multihead_attn."
        "in_proj_weight",
        "sem_seg_head.interaction.layer_norm_q_1.weight": "interaction.norm_q.weight",
        "sem_seg_head.interaction.layer_norm_k_1.bias": "interaction.norm_k.bias",
        "sem_seg_head.interaction.attn.out_proj.weight": "interaction.attn.out_proj.weight",
        "sem_seg_head.interaction.gamma": "interaction.gamma",
        "clip_adapter.non_object_embedding": "no_object.no_object",
        "clip_adapter.prompt_learner.prefix_prompt": "prompt.class_context",
        "clip_adapter.prompt_learner.task_prompt": "prompt.task_context",
    }
    for old, new in pairs.items():
        assert report.used[old] == new
        assert torch.equal(state[new], official[old].to(state[new].dtype)), new
    # the frozen CLIP and the prompt signals equal the teacher's, so they are dropped
    assert report.dropped["clip_adapter.clip_model.token_embedding.weight"].startswith("frozen")
    assert "criterion.empty_weight" in report.dropped
    signals = [c for c in report.teacher if c.official.endswith("_signal")]
    assert len(signals) == 4 and all(c.ok(1e-6) for c in signals)
    assert all(c.ok(1e-6) for c in report.teacher) and report.checked_model


def test_unknown_refused_and_missing_keys_fail_by_name(built, official):
    cfg, model = built
    strange = dict(official, **{"sem_seg_head.extra.weight": torch.zeros(2)})
    with pytest.raises(ConversionError, match=r"sem_seg_head\.extra\.weight .*no rule knows it"):
        convert_checkpoint("freeseg", strange)
    # renamed by its family, then refused by the model's check
    strange = dict(official, **{"sem_seg_head.predictor.extra.weight": torch.zeros(2)})
    with pytest.raises(ConversionError, match=r"not in the config's model: decoder\.extra"):
        convert_checkpoint("freeseg", strange, cfg, model=model)
    suffix = dict(official, **{"clip_adapter.prompt_learner.suffix_prompt": torch.zeros(2, 64)})
    with pytest.raises(ConversionError, match="after the class name"):
        convert_checkpoint("freeseg", suffix)
    no_gamma = {k: v for k, v in official.items() if k != "sem_seg_head.interaction.gamma"}
    with pytest.raises(
        ConversionError, match="missing in the official checkpoint: interaction.gamma"
    ):
        convert_checkpoint("freeseg", no_gamma, cfg, model=model)
    no_prompts = {k: v for k, v in official.items() if "prefix_prompt" not in k}
    with pytest.raises(ConversionError, match="prefix_prompt"):
        convert_checkpoint("freeseg", no_prompts)
    long_prompt = dict(official)
    long_prompt["clip_adapter.prompt_learner.prefix_prompt"] = torch.zeros(16, 64)
    with pytest.raises(ConversionError, match=r"shape differs: prompt\.class_context"):
        convert_checkpoint("freeseg", long_prompt, cfg, model=model)
    other_clip = dict(official)
    other_clip["clip_adapter.clip_model.ln_final.weight"] = torch.zeros(64)
    with pytest.raises(ConversionError, match="ln_final.weight"):
        convert_checkpoint("freeseg", other_clip, cfg, model=model)


def test_command_line_reads_a_detectron2_checkpoint(built, official, tmp_path, capsys):
    cfg, model = built
    src, dst = tmp_path / "model_final.pth", tmp_path / "converted.pth"
    torch.save({"model": official, "iteration": 59999}, src)
    assert main(["--method", "freeseg", "--input", str(src), "--output", str(dst)]) == 0
    assert "FreeSeg:" in capsys.readouterr().out
    converted = torch.load(dst, weights_only=True)["model"]
    model.load_state_dict(converted, strict=True)
