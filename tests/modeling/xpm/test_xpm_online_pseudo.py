"""The XPM student's online caption pseudo-labels (MODEL.XPM.PSEUDO_LABEL_SOURCE "online",
ovseg/modeling/meta_arch/xpm_online.py): a frozen copy of the teacher's RoI heads labels each
training image in the step; with the identity augmentation it gives what the store made by
the generation job gives, on the captioned COCO-layout fixture and a tiny random teacher."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import tiny_xpm_cfg
from ovseg_testing.xpm import XPM_TRAIN, registered_captioned_coco

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ovseg.data import build_dataset_mapper
from ovseg.data.captions.settings import xpm_pseudo_label_source
from ovseg.data.dataset_mappers import XPMInstanceDatasetMapper
from ovseg.modeling.xpm.outputs import class_subset
from ovseg.pseudo import InstancePseudoLabelStore, attach_pseudo_instances
from ovseg.pseudo.instance_store import generate_pseudo_instances

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ONLINE = [
    "MODEL.XPM.PSEUDO_LABEL_SOURCE", "online",
    "MODEL.XPM.REGION_EMBEDDING", "teacher",
    "MODEL.XPM.PROPOSE_TOPK", "0",  # every RPN proposal a candidate, as the paper leaf
    "MODEL.OVSEG.TRAIN_VOCABULARY", "person,dog,tv",
    "DATASETS.TRAIN", f"('{XPM_TRAIN}',)",
    "INPUT.MIN_SIZE_TEST", "32",  # the fixture's 32x48 images at their own size
]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The captioned fixture registered, and a tiny random teacher's checkpoint."""
    tmp = tmp_path_factory.mktemp("xpm_online")
    with registered_captioned_coco(tmp / "datasets"):
        torch.manual_seed(0)
        teacher = build_model(tiny_xpm_cfg(tmp / "cache", "XPMTeacher"))
        with torch.no_grad():  # a sane random teacher: proposals kept, masks mostly inside
            teacher.roi_heads.box_predictor.bbox_pred.weight.zero_()
            teacher.roi_heads.box_predictor.bbox_pred.bias.zero_()
            teacher.roi_heads.mask_head.predictor.bias.fill_(1.0)
        path = tmp / "teacher.pth"
        torch.save({"model": teacher.state_dict()}, path)
        yield tmp, str(path)


def _cfg(world, *opts):
    tmp, weights = world
    return tiny_xpm_cfg(
        tmp / "cache", "XPMStudent", "MODEL.XPM.TEACHER_WEIGHTS", weights, *ONLINE, *opts
    )


def _student(cfg):
    torch.manual_seed(1)
    return build_model(cfg).train()


def _samples(cfg, dicts=None):
    """Training samples through the XPM mapper with the identity augmentation (no resize,
    flip or crop; 32x48 needs no padding to 16)."""
    args = {**XPMInstanceDatasetMapper.from_config(cfg, True), "augmentations": []}
    mapper = XPMInstanceDatasetMapper(**{**args, "size_divisibility": 16})
    return [mapper(dict(d)) for d in (dicts or DatasetCatalog.get(XPM_TRAIN))]


def _online_targets(model, batch):
    """The pseudo targets the student's step trains on (its own path, spied on)."""
    seen = []
    original = model.pseudo_losses

    def spy(images, features, pseudo, *args):
        seen.extend(pseudo)
        return original(images, features, pseudo, *args)

    model.pseudo_losses = spy
    with EventStorage(0):
        model(batch)
    return seen


def _store_targets(model, cfg, tmp, batch_dicts):
    """The same images' pseudo targets through the store: the generation job (the teacher
    built from its checkpoint, the student's labeller) on test-mapped images, then the XPM
    mapper reading the store, then the student's target path."""
    from ovseg.engine.pseudo_instances import build_proposer

    store_cfg = cfg.clone()
    store_cfg.defrost()
    store_cfg.MODEL.XPM.PSEUDO_LABEL_SOURCE = "store"
    manifest = {"fingerprint": "f" * 64, "vocabulary": ["person", "dog", "tv"],
                "threshold": 0.0, "dataset": XPM_TRAIN, "unseen": ["dog"]}  # fmt: skip
    store = InstancePseudoLabelStore.create(str(tmp / "store"), manifest)
    teacher = build_proposer(store_cfg)  # eval, from MODEL.XPM.TEACHER_WEIGHTS
    labeller = model.online_labeller
    test_mapper = build_dataset_mapper(store_cfg, False, XPM_TRAIN)
    generate_pseudo_instances(teacher, labeller, batch_dicts, test_mapper, store, progress=False)
    store_cfg.DATASETS.PSEUDO_LABELS = str(tmp / "store")
    samples = _samples(store_cfg, attach_pseudo_instances(batch_dicts, store))
    names = model.batch_vocabulary(samples)
    _, table = class_subset(names, model.seen_names, model.stuff_names)
    return model.gt_targets(samples, names, table)[1], store


def test_online_targets_equal_the_stores_for_the_identity_augmentation(world):
    cfg = _cfg(world)
    model = _student(cfg)
    dicts = DatasetCatalog.get(XPM_TRAIN)
    # one image per step, as the generation job runs (a batch of two computes the same
    # convolutions with other float rounding: boxes then agree to 1e-3 pixels)
    online = [t for x in _samples(cfg, dicts) for t in _online_targets(model, [x])]
    stored, store = _store_targets(model, cfg, world[0], dicts)
    assert len(online) == len(stored) == 2
    records = [store.read(i) for i in store.image_ids()]
    # every caption noun got an instance (the fixture's person / dog / tv words)
    assert all(len(r["instances"]) == len(r["nouns"]) > 0 for r in records)
    for a, b in zip(online, stored):
        assert len(a) == len(b) > 0
        assert a.image_size == b.image_size == (32, 48)
        assert torch.equal(a.gt_classes, b.gt_classes)
        assert torch.equal(a.gt_masks.tensor, b.gt_masks.tensor)
        assert torch.allclose(a.gt_boxes.tensor, b.gt_boxes.tensor, atol=1e-5)
        assert bool(a.gt_is_pseudo.all())


def test_a_training_step_labels_online_and_the_loss_goes_down(world):
    cfg = _cfg(world)
    model = _student(cfg)
    batch = _samples(cfg)
    assert all(len(x["instances"]) == int((~x["instances"].gt_is_pseudo).sum()) for x in batch)
    assert [len(x["captions"]) for x in batch] == [3, 2]  # the mapper passes them on
    teacher_heads = {k: v.clone() for k, v in model.teacher_roi_heads.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in model.teacher_roi_heads.parameters())
    optimizer = torch.optim.SGD(params, lr=0.005)
    totals, pseudo = [], []
    for step in range(6):
        with EventStorage(step):
            losses = model(batch)
        pseudo.append(float(losses["loss_mask_pseudo"]))
        assert pseudo[-1] > 0  # the pseudo pass ran on the online labels
        total = sum(losses.values())
        totals.append(float(total))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert totals[-1] < totals[0] and pseudo[-1] < pseudo[0], (totals, pseudo)
    assert not model.teacher_roi_heads.training  # frozen, in eval while the student trains
    for k, v in model.teacher_roi_heads.state_dict().items():
        assert torch.equal(v, teacher_heads[k]), k
    student = model.roi_heads.box_predictor.projection.weight
    assert not torch.equal(student, teacher_heads["box_predictor.projection.weight"])


def test_inputs_without_captions_get_no_pseudo_pass(world):
    cfg = _cfg(world)
    model = _student(cfg)
    batch = _samples(cfg)
    labelled = []
    original = model.regions_of

    def spy(features, proposals, *args, **kwargs):
        labelled.append(len(proposals))
        return original(features, proposals, *args, **kwargs)

    model.regions_of = spy
    batch[0]["captions"] = []
    del batch[1]["captions"]
    with EventStorage(0):
        losses = model(batch)
    assert labelled == [] and float(losses["loss_mask_pseudo"]) == 0.0
    batch[1]["captions"] = ["a television"]  # one input with a noun: it alone is labelled
    targets = _online_targets(model, batch)
    assert labelled == [1] and len(targets[0]) == 0 and len(targets[1]) == 1


def test_the_teacher_copy_stays_out_of_checkpoints(world):
    model = _student(_cfg(world))
    state = model.state_dict()
    assert state and not any(k.startswith("teacher_roi_heads.") for k in state)
    fresh = _student(_cfg(world))
    assert not fresh.load_state_dict(state).missing_keys  # strict: the copy is not missing
    for k, v in model.teacher_roi_heads.state_dict().items():  # both from TEACHER_WEIGHTS
        assert torch.equal(v, fresh.teacher_roi_heads.state_dict()[k]), k


@pytest.mark.parametrize(
    "opts, words",
    [
        (["MODEL.XPM.PSEUDO_LABEL_SOURCE", "offline"], "is not one of"),
        (["MODEL.XPM.TEACHER_WEIGHTS", ""], "TEACHER_WEIGHTS, which is empty"),
        (["MODEL.XPM.REGION_EMBEDDING", "pool"], "REGION_EMBEDDING 'teacher'"),
        (["DATASETS.PSEUDO_LABELS", "output/store"], "leave it empty"),
    ],
)
def test_misconfigured_online_sources_are_refused(world, opts, words):
    cfg = _cfg(world, *opts)
    with pytest.raises(ValueError, match=words):
        xpm_pseudo_label_source(cfg)
    with pytest.raises(ValueError, match=words):
        build_model(cfg)


def test_the_online_mapper_refuses_a_dataset_without_captions(world):
    cfg = _cfg(world)
    d = dict(DatasetCatalog.get(XPM_TRAIN)[0])
    del d["captions"]
    with pytest.raises(ValueError, match="has no 'captions'"):
        _samples(cfg, [d])
    store_cfg = cfg.clone()
    store_cfg.defrost()
    store_cfg.MODEL.XPM.PSEUDO_LABEL_SOURCE = "store"
    assert "captions" not in _samples(store_cfg, [d])[0]  # the store path never needs them
