"""The FreeSeg meta-architecture on a tiny random CLIP: multi-task training, per-task targets,
which parameters learn, and the three inference outputs in detectron2's formats."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import PANOPTIC_OPTS, tiny_freeseg_cfg
from ovseg_testing.panoptic import registered_tiny_panoptic

from detectron2.modeling import build_model
from detectron2.structures import ImageList, Instances

from ovseg.modeling.freeseg import query_probs
from ovseg.modeling.freeseg.tasks import post_config, task_targets
from ovseg.modeling.mask_classification import panoptic_inference
from ovseg.modeling.meta_arch.freeseg import FreeSeg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["red thing", "green thing", "sky"]
THINGS = ["red thing", "green thing"]


def _sample(seed: int, size: int = 32, task=None) -> dict:
    """An image with sky on top and two things below; panoptic targets (two red things)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.zeros(3, size, size)
    image[2, : size // 2] = 200  # sky: blue
    image[0, size // 2 :, : size // 3] = 220  # red thing 1
    image[0, size // 2 :, 2 * size // 3 :] = 220  # red thing 2
    image[1, size // 2 :, size // 3 : 2 * size // 3] = 200  # green thing
    image = (image + torch.randint(0, 20, image.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    masks = torch.zeros(4, size, size, dtype=torch.bool)
    masks[0, : size // 2] = True
    masks[1, size // 2 :, : size // 3] = True
    masks[2, size // 2 :, 2 * size // 3 :] = True
    masks[3, size // 2 :, size // 3 : 2 * size // 3] = True
    inst = Instances((size, size))
    inst.gt_classes = torch.tensor([2, 0, 0, 1])
    inst.gt_masks = masks
    out = {"image": image, "instances": inst, "vocabulary": NAMES, "file_name": f"s{seed}"}
    if task is not None:
        out["task"] = task
    return out


def _model(tmp_path, *opts, things=THINGS) -> FreeSeg:
    torch.manual_seed(0)
    model = build_model(tiny_freeseg_cfg(tmp_path / "clip_cache", *opts))
    model.thing_classes = frozenset(things)
    return model


def test_task_targets_per_task():
    inst = _sample(0)["instances"]
    is_thing = [True, True, False]
    sem = task_targets(inst, "semantic", is_thing)
    assert sem.gt_classes.tolist() == [0, 1, 2]
    assert torch.equal(sem.gt_masks[0], inst.gt_masks[1] | inst.gt_masks[2])  # both red things
    ins = task_targets(inst, "instance", is_thing)
    assert ins.gt_classes.tolist() == [0, 0, 1]  # the sky (stuff) is no instance
    pan = task_targets(inst, "panoptic", is_thing)
    assert pan.gt_classes.tolist() == [2, 0, 0, 1] and torch.equal(pan.gt_masks, inst.gt_masks)
    with pytest.raises(ValueError, match="not one of"):
        task_targets(inst, "depth", is_thing)


def test_semantic_targets_from_the_label_map(tmp_path):
    inst = _sample(0)["instances"]
    labels = torch.full((32, 32), 255)
    labels[:16] = 2  # sky, as the segments
    labels[20:, :] = 0  # a red thing where the segments have both red things and the green
    sem = task_targets(inst, "semantic", [True, True, False], labels, 255)
    assert sem.gt_classes.tolist() == [0, 2]
    assert torch.equal(sem.gt_masks[0], labels == 0) and torch.equal(sem.gt_masks[1], labels == 2)
    # the other tasks keep the segments
    assert torch.equal(task_targets(inst, "panoptic", [True] * 3, labels).gt_masks, inst.gt_masks)
    # a training set without label files is refused for "sem_seg"
    with registered_tiny_panoptic(tmp_path / "pan"):
        with pytest.raises(ValueError, match=r"SEMANTIC_TARGETS 'sem_seg'.*has none"):
            _model(tmp_path, "MODEL.FREESEG.SEMANTIC_TARGETS", "sem_seg", *PANOPTIC_OPTS)
    with registered_tiny_panoptic(tmp_path / "pan_labels", sem_seg=True):
        _model(tmp_path, "MODEL.FREESEG.SEMANTIC_TARGETS", "sem_seg", *PANOPTIC_OPTS)
    with pytest.raises(ValueError, match=r"SEMANTIC_TARGETS 'labels' is not one of"):
        _model(tmp_path, "MODEL.FREESEG.SEMANTIC_TARGETS", "labels")


def test_official_panoptic_drop_is_the_training_class_count(tmp_path):
    opts = ("MODEL.MASK_FORMER.TEST.OFFICIAL_PANOPTIC_DROP", "True")
    with registered_tiny_panoptic(tmp_path / "pan"):
        cfg = tiny_freeseg_cfg(tmp_path / "clip_cache", *opts, *PANOPTIC_OPTS)
        assert post_config(cfg)["drop_label"] == 3  # cat, dog, sky
        cfg.MODEL.OVSEG.ZERO_SHOT_SETTING = "inductive"
        assert post_config(cfg)["drop_label"] == 2  # the dog unseen
    assert _model(tmp_path).post["drop_label"] is None
    with pytest.raises(ValueError, match="OFFICIAL_PANOPTIC_DROP.*DATASETS.TRAIN"):
        _model(tmp_path, *opts)


def test_each_forward_draws_one_task_among_the_supported(tmp_path):
    model = _model(tmp_path, "MODEL.FREESEG.TRAIN_TASKS", "['semantic', 'panoptic']")
    random.seed(0)
    drawn = {model.batch_task([_sample(0)]) for _ in range(40)}
    assert drawn == {"semantic", "panoptic"}
    assert model.batch_task([_sample(0, task="ins_seg")]) == "instance"
    with pytest.raises(ValueError, match="one task"):
        model.batch_task([_sample(0, task="sem_seg"), _sample(1, task="pan_seg")])


def test_the_text_follows_the_task(tmp_path):
    model = _model(tmp_path)
    sem, pan = model.text_features(NAMES, "semantic"), model.text_features(NAMES, "panoptic")
    assert sem.shape == pan.shape == (3, model.teacher.embed_dim)
    assert not torch.allclose(sem, pan)


def test_trains_and_the_loss_goes_down(tmp_path):
    model = _model(tmp_path)
    model.train()
    batch = [_sample(i, task="pan_seg") for i in range(3)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(15):
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def _grads(model: FreeSeg, batch) -> dict:
    model.train()
    model.zero_grad()
    sum(model(batch).values()).backward()
    return {
        n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()
    }


def test_only_the_student_and_the_prompts_learn(tmp_path):
    model = _model(tmp_path)
    assert not any(p.requires_grad for p in model.teacher.model.parameters())
    assert all(not n.startswith("teacher.") for n in model.state_dict())
    got = _grads(model, [_sample(0, task="pan_seg"), _sample(1, task="pan_seg")])
    for name in ("prompt.class_context", "prompt.task_context", "no_object.no_object"):
        assert got[name], name
    for part in ("backbone.", "pixel_decoder.", "interaction.", "decoder.class_embed."):
        assert any(v for n, v in got.items() if n.startswith(part)), part


def test_loaded_prompt_tokens_are_frozen(tmp_path):
    source = _model(tmp_path)
    path = tmp_path / "prompt_stage.pth"
    state = {f"prompt.{k}": v.detach() * 0 + 0.5 for k, v in source.prompt.state_dict().items()}
    torch.save({"model": state}, path)
    model = _model(tmp_path, "MODEL.FREESEG.PROMPT_CHECKPOINT", str(path))
    assert torch.all(model.prompt.class_context == 0.5)
    assert not model.prompt.class_context.requires_grad
    got = _grads(model, [_sample(0, task="sem_seg"), _sample(1, task="sem_seg")])
    assert not got["prompt.class_context"] and not got["prompt.task_context"]
    assert got["no_object.no_object"]


@pytest.mark.parametrize("ensemble", [True, False])
def test_inference_gives_the_three_outputs(tmp_path, ensemble):
    opts = ["MODEL.FREESEG.TEST_TASKS", "['semantic', 'instance', 'panoptic']"]
    model = _model(tmp_path, *opts, "MODEL.FREESEG.CLIP_ENSEMBLE", str(ensemble))
    model.eval()
    x = _sample(0, size=64)  # a 1x1 res5 map would leave the pixel decoder's GN one value
    with torch.no_grad():
        (out,) = model([{"image": x["image"], "height": 40, "width": 48, "vocabulary": NAMES}])
    sem = out["sem_seg"]
    assert sem.shape == (3, 40, 48) and sem.min() >= 0
    # a sum over queries of class probability x mask probability: at most the query count
    assert sem.sum(0).max() <= model.decoder.num_queries + 1e-4
    seg, segments = out["panoptic_seg"]
    assert seg.shape == (40, 48) and seg.dtype == torch.int32
    assert set(seg.unique().tolist()) <= {0} | {s["id"] for s in segments}
    for s in segments:
        assert set(s) == {"id", "category_id", "isthing"}
        assert s["isthing"] == (NAMES[s["category_id"]] in THINGS)
    inst = out["instances"]
    assert inst.image_size == (40, 48)
    assert inst.pred_masks.shape[1:] == (40, 48)
    assert len(inst.scores) == len(inst.pred_classes) == len(inst.pred_boxes)
    assert all(NAMES[c] in THINGS for c in inst.pred_classes.tolist())


def test_clip_temperature_zero_is_the_clips_own_logit_scale(tmp_path):
    model = _model(tmp_path, "MODEL.FREESEG.CLIP_TEMPERATURE", "0.0")
    own = float(model.teacher.model.logit_scale.exp())
    assert model.clip_temperature == pytest.approx(own) and own != 100.0
    assert _model(tmp_path).clip_temperature == 100.0  # the official default
    with pytest.raises(ValueError, match="CLIP_TEMPERATURE"):
        _model(tmp_path, "MODEL.FREESEG.CLIP_TEMPERATURE", "-1.0")


def test_a_shrinking_mask_expand_ratio_is_refused_at_build(tmp_path):
    with pytest.raises(ValueError, match="MASK_EXPAND_RATIO must be >= 1"):
        _model(tmp_path, "MODEL.FREESEG.MASK_EXPAND_RATIO", "0.5")


def test_sliding_window_testing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="whole images"):
        _model(tmp_path, "TEST.INFERENCE_MODE", "slide")


def test_topk_instance_inference_returns_scored_thing_instances(tmp_path):
    # the random model's FreeSeg-rule instances are often empty (score threshold 0.5); the
    # top-k rule always returns some, so the instance format is checked on real instances
    opts = ["MODEL.FREESEG.TEST_TASKS", "['instance']", "MODEL.MASK_FORMER.TEST.INSTANCE_MODE"]
    model = _model(tmp_path, *opts, "topk")
    model.eval()
    x = _sample(0, size=64)
    with torch.no_grad():
        (out,) = model([{"image": x["image"], "height": 40, "width": 48, "vocabulary": NAMES}])
    inst = out["instances"]
    assert len(inst) > 0 and inst.image_size == (40, 48)
    assert inst.pred_masks.shape == (len(inst), 40, 48)
    assert all(NAMES[c] in THINGS for c in inst.pred_classes.tolist())
    assert bool(((inst.scores >= 0) & (inst.scores <= 1)).all())
    boxes = inst.pred_boxes.tensor
    assert bool(
        (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 48).all() and (boxes[:, 3] <= 40).all()
    )


def test_the_ensemble_takes_the_test_sets_seen_classes(tmp_path):
    # COCO panoptic names 17 stuff classes "*-merged", names the COCO-Stuff training set
    # lacks; the release weights them as seen (the test set's trainable_flag), so here too.
    # Only metadata is read: no dataset files are needed.
    coco = ["DATASETS.TRAIN", "('coco_2017_train_full_task_base',)"]
    model = _model(tmp_path, *coco, "DATASETS.TEST", "('coco_2017_val_panoptic_with_sem_seg',)")
    seen = model.seen_classes
    assert {"tree-merged", "wall-other-merged", "sky-other-merged", "person"} <= seen
    # the panoptic set's 11 unseen classes stay unseen
    assert not {"cow", "carrot", "cardboard", "playingfield", "river", "road"} & seen
    assert len(seen) == 156 + 17
    # a test set without a zero-shot split adds nothing: its other names stay unseen
    plain = _model(tmp_path, *coco, "DATASETS.TEST", "('coco_2017_val_panoptic',)")
    assert len(plain.seen_classes) == 156 and "tree-merged" not in plain.seen_classes


@pytest.mark.parametrize("aligned", [True, False])
def test_tasks_run_at_the_input_size_then_resize_as_the_release(tmp_path, aligned):
    # the release (open_vocabulary_model.py:261-285, 372-407): mask logits to the padded
    # input with corners aligned (MODEL.FREESEG.TEST_ALIGN_CORNERS False: unaligned, as the
    # loss), cropped; each task at the input size; then sem_seg resized bilinearly and the
    # panoptic ids by nearest neighbour to (height, width)
    opts = ["MODEL.FREESEG.TEST_TASKS", "['semantic', 'panoptic']"]
    opts += ["MODEL.FREESEG.TEST_ALIGN_CORNERS", str(aligned)]
    model = _model(tmp_path, *opts, "MODEL.FREESEG.CLIP_ENSEMBLE", "False")
    model.eval()
    image = _sample(0, size=64)["image"][:, :52]  # padded to 64 x 64
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 40, "width": 48, "vocabulary": NAMES}])
        batch = ImageList.from_tensors(model.normalize([image]), model.size_divisibility)
        assert batch.tensor.shape[-2:] == (64, 64)
        pixels = model.pixel_features(batch.tensor)
        ref = {}
        for task in ("semantic", "panoptic"):
            pred = model.decode(pixels, model.text_embeddings(NAMES, task))
            masks = F.interpolate(
                pred["pred_masks"], (64, 64), mode="bilinear", align_corners=aligned
            )
            ref[task] = (query_probs(pred["pred_logits"][0]), masks[0, :, :52, :64])
    probs, masks = ref["semantic"]
    sem = torch.einsum("qc,qhw->chw", probs, masks.sigmoid())
    expected = F.interpolate(sem[None], (40, 48), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(out["sem_seg"], expected, atol=1e-5)
    seg, _ = panoptic_inference(
        *ref["panoptic"],
        thing_ids={0, 1},
        has_no_object=False,
        temperature=0.01,
        thing_score_threshold=0.5,
        overlap_threshold=0.5,
        pixel_assignment="class",
    )
    expected = F.interpolate(seg[None, None].float(), (40, 48), mode="nearest-exact")[0, 0]
    assert torch.equal(out["panoptic_seg"][0], expected.int())
    assert {s["id"] for s in out["panoptic_seg"][1]} == set(expected.unique().tolist()) - {0}
