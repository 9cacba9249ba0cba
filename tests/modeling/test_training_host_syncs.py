"""The semantic students' training steps build nothing from host data and find nothing by
nonzero (on CUDA each is a wait for the device): ZegCLIP's unseen classes' pixels before
self-training and learnable background's rows, the vocabulary groups' sample indices."""

import traceback

import pytest
import torch
from ovseg_testing import OpNames
from ovseg_testing.data import two_region_batch
from ovseg_testing.models import tiny_lseg, tiny_zegclip

from detectron2.utils.events import EventStorage

from ovseg.benchmark.syncs import HostSyncCounter
from ovseg.modeling.host_copy import batch_index, instances_to_device

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_unseen_pixels_before_self_training_are_looked_up_not_found_by_nonzero(tmp_path):
    from test_zegclip import _split_model  # the 4-class split with "cow" and "sheep" unseen

    model = _split_model(tmp_path, "none", self_training_pixels="unseen",
                         self_training_start_iter=5)  # fmt: skip
    names = ("cat", "cow", "grass", "sheep")
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 6, 7), generator=g)
    target[0, :2] = 255
    logits = torch.zeros(2, 4, 6, 7)
    with EventStorage(start_iter=0):
        model._targets(target, logits, names)  # the flags memoised
        with HostSyncCounter() as counter:
            out, classes = model._targets(target, logits, names)
    assert counter.total == 0, counter.counts
    unseen = torch.tensor([1, 3])
    assert torch.equal(out, target.masked_fill(torch.isin(target, unseen), 255))
    assert classes.tolist() == [True, False, True, False]


class _FreshTensors(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts tensors built from host data (``torch.tensor(...)``: ``lift_fresh``), each a
    copy from pageable memory, which waits for the device, when the target is CUDA."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.ovseg_sites = []  # where ovseg's own code built one (not detectron2's, below it)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "lift_fresh":
            self.count += 1
            frames = [
                f
                for f in traceback.extract_stack()
                if "/ovseg/" in f.filename or "/detectron2/" in f.filename
            ]
            if frames and "/ovseg/" in frames[-1].filename:
                last = frames[-1]
                self.ovseg_sites.append(f"{last.filename.split('/')[-1]}:{last.name}")
        return func(*args, **(kwargs or {}))


def test_the_learnable_background_rows_are_built_once(tmp_path):
    model = tiny_zegclip(tmp_path, background_class="grass", bg_embed=True)
    names = ("cat", "dog", "grass")
    first = model.text_embeddings(names)
    with _FreshTensors() as fresh:
        again = model.text_embeddings(names)
    assert fresh.count == 0 and torch.equal(first, again)
    # the background's row is the learnable embedding's direction
    cosine = torch.cosine_similarity(again[2], model.classifier.bg_embed.embedding[0], dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("build", [tiny_zegclip, tiny_lseg], ids=["zegclip", "lseg"])
def test_a_training_step_builds_no_index_from_host_data(tmp_path, build):
    # tensor[list] of a vocabulary group built its index on the host: a copy and a wait per
    # use on CUDA (LSeg 2 per step, ZegCLIP 3); detectron2's ImageList sizes stay on the host
    model = build(tmp_path).train()
    batch = two_region_batch(names=("cat", "dog", "grass"))
    with EventStorage(start_iter=0):
        model(batch)
        with _FreshTensors() as fresh:
            model(batch)
    assert fresh.ovseg_sites == []


def test_batch_index_is_an_alias_for_the_whole_batch_and_indices_otherwise():
    x = torch.arange(12).reshape(4, 3)
    everything = batch_index([0, 1, 2, 3], 4, torch.device("cpu"))
    y = torch.randn(4, 3, requires_grad=True) * 2
    with OpNames() as ops:
        out = y[everything]
        out.sum().backward()
    # an alias of the batch: its backward adds no pass over the gradient (``y[:]``'s
    # slice_backward made a tensor of zeros and copied the gradient into it)
    assert out._base is y and "alias" in ops.names and "slice_backward" not in ops.names
    assert torch.equal(x[everything], x)
    index = batch_index([1, 3], 4, torch.device("cpu"))
    assert index.dtype == torch.long and torch.equal(x[index], x[[1, 3]])


def test_a_freeseg_step_builds_tensors_from_host_data_only_for_its_matching(tmp_path):
    # the prompts' token ids, the encoder's level sizes (and their read-back per layer), the
    # decoder's empty-mask rows (torch.where) and the mask count (a device scalar read
    # back) each waited for the device; what stays: the matcher's assignment (scipy, on the
    # host) and its one copy to the device
    from test_freeseg import _model, _sample

    model = _model(tmp_path).train()
    batch = [_sample(i, task="panoptic") for i in range(2)]
    with EventStorage(start_iter=0):
        model(batch)
        with _FreshTensors() as fresh:
            model(batch)
        with HostSyncCounter() as counter:
            model(batch)
    assert set(fresh.ovseg_sites) <= {"matcher.py:forward", "criterion.py:matched_on"}
    assert "nonzero" not in counter.counts and "tolist" not in str(counter.counts)


def test_maskclip_plus_self_training_selects_the_scored_classes_without_host_data(tmp_path):
    # student_logits[:, list] built the index on the host at every self-training step
    from ovseg_testing import ADE, GRASS, write_unseen_fixture, zero_shot_train_mapper
    from test_maskclip_plus import UNSEEN, build, constant_store, zero_logits

    dicts = write_unseen_fixture(tmp_path / "data", n=1)
    model = build(tmp_path, "MODEL.OVSEG.SELF_TRAINING.START_ITER", "0")
    dicts, store = constant_store(tmp_path / "store", dicts, UNSEEN, ADE.names[GRASS])
    sample = zero_shot_train_mapper(store=store)(dicts[0])
    logits = zero_logits([sample])
    want = model.training_targets([sample], logits, iteration=5)
    with _FreshTensors() as fresh:
        got = model.training_targets([sample], logits, iteration=5)
    assert "maskclip_plus.py:training_targets" not in fresh.ovseg_sites, fresh.ovseg_sites
    assert torch.equal(got, want)


def test_xpm_splits_checks_and_maps_its_targets_before_copying_them(tmp_path, monkeypatch):
    # on the device each boolean split (ground truth / pseudo), each class check and the
    # class table's copy waited for it, per image: done where the mapper left them, then
    # one pinned copy of what the step trains on
    from ovseg_testing import tiny_xpm_cfg, xpm_batch

    from detectron2.modeling import build_model

    import ovseg.modeling.meta_arch.xpm as xpm
    from ovseg.modeling.xpm.outputs import class_subset

    moved = []

    def recording(inst, device):
        moved.append(inst)
        return instances_to_device(inst, device)

    monkeypatch.setattr(xpm, "instances_to_device", recording)
    model = build_model(tiny_xpm_cfg(tmp_path, "XPMStudent"))
    model.seen_names = ("cat", "bird")
    names = model.batch_vocabulary(xpm_batch())
    _, table = class_subset(names, model.seen_names, model.stuff_names)
    gt, pseudo = model.gt_targets(xpm_batch(), names, table)
    # what was copied: ground truth only, its classes already mapped through the table
    assert len(moved) == 2 and all(not m.gt_is_pseudo.any() for m in moved)
    assert [m.gt_classes.tolist() for m in moved] == [[0], [0]]  # "cat", first seen name
    assert [len(p) for p in pseudo] == [1, 1] and all(p.gt_is_pseudo.all() for p in pseudo)
    assert all(g.gt_classes.device == model.device for g in gt)


def test_tensors_memoised_during_an_evaluation_still_train(tmp_path):
    # an evaluation (torch.inference_mode) before training resumes must not leave inference
    # tensors in the memos: autograd refuses to save them for backward
    from test_freeseg import _model, _sample

    zeg = tiny_zegclip(tmp_path / "zeg", background_class="grass", bg_embed=True).eval()
    names = ("cat", "dog", "grass")
    with torch.inference_mode():
        zeg.text_embeddings(names)  # memoises the background's rows
        zeg(two_region_batch(names=names))
    with EventStorage(start_iter=0):
        sum(zeg.train()(two_region_batch(names=names)).values()).backward()

    freeseg = _model(tmp_path / "freeseg").eval()
    batch = [_sample(i, task="panoptic") for i in range(2)]
    with torch.inference_mode():  # memoises token ids and level sizes
        freeseg.text_features(freeseg.input_vocabulary(batch[0], None), "panoptic")
        freeseg.pixel_features(torch.stack(freeseg.normalize([x["image"] for x in batch])))
    with EventStorage(start_iter=0):
        sum(freeseg.train()(batch).values()).backward()


def _tower_forwards(teacher, monkeypatch) -> list:
    """The batch size of each dense forward of ``teacher``'s tower from now on."""
    forwards = []
    dense = teacher.dense_embeddings
    monkeypatch.setattr(
        teacher, "dense_embeddings",
        lambda images, **k: forwards.append(images.shape[0]) or dense(images, **k),
    )  # fmt: skip
    return forwards


def test_maskclip_plus_checks_its_labels_on_the_host_only(tmp_path, monkeypatch):
    # the ground truth is checked on the host, per sample; the teacher's labels of the
    # augmented image, made on the model's device, are its classes or ignore by construction
    # (checked here) and were checked again on the device: a wait at every step on CUDA
    from ovseg_testing.data import random_image
    from ovseg_testing.models import tiny_maskclip_plus

    names = ["cat", "dog", "grass", "sky", "road"]
    model = tiny_maskclip_plus(
        tmp_path, unseen=["grass", "road"], pseudo_label_source="online_augmented"
    ).train()
    batch = []
    for i in range(2):
        label = torch.zeros(32, 32, dtype=torch.long)
        label[8:, :] = model.ignore_value  # unseen ground truth as the mapper leaves it: free
        batch.append({"image": random_image(32, 32, seed=i), "sem_seg": label,
                      "vocabulary": names, "file_name": f"{i}.png"})  # fmt: skip
    checked, made = [], []
    check, teacher_labels = model.check_labels, model.teacher_labels
    monkeypatch.setattr(model, "check_labels", lambda t, *a: checked.append(t) or check(t, *a))
    monkeypatch.setattr(
        model, "teacher_labels", lambda *a, **k: made.append(teacher_labels(*a, **k)) or made[-1]
    )
    forwards = _tower_forwards(model.labeller.teacher, monkeypatch)
    with EventStorage(0):
        model(batch)
    assert len(made) == 1, "the teacher labelled nothing"
    assert forwards == [2], forwards  # both samples in one forward of the tower
    assert [id(t) for t in checked] == [id(x["sem_seg"]) for x in batch]
    labels = made[0]
    assert labels.shape == (2, 32, 32)
    valid = (labels >= 0) & (labels < len(names)) | (labels == model.ignore_value)
    assert bool(valid.all()) and bool((labels != model.ignore_value).any())


def test_maskclip_plus_labels_a_batch_of_augmented_images_in_one_forward(tmp_path, monkeypatch):
    # a labeller call per sample ran the teacher's tower once per image (16 small forwards per
    # step on the GPU): now one forward per image size, the same labels as image by image
    from ovseg_testing.data import random_image
    from ovseg_testing.models import tiny_maskclip_plus

    from ovseg.modeling.meta_arch.maskclip_plus_targets import (
        TeacherLabelling,
        augmented_images_labels,
    )

    model = tiny_maskclip_plus(tmp_path, unseen=["grass", "road"]).eval()
    names = ("cat", "dog", "grass", "sky", "road")
    scored = (2, 4)  # the unseen classes, as the transductive teacher scores them
    stats = (model.pixel_mean, model.pixel_std)  # the student's normalisation, restandardised
    how = TeacherLabelling(model.labeller, names, scored, 0.0, model.ignore_value, stats)
    samples = [{"image": random_image(32, 48, seed=i)} for i in range(3)]
    samples.append({"image": random_image(40, 32, seed=3)})  # another size: its own forward
    one_by_one = [augmented_images_labels([x], how)[0] for x in samples]

    forwards = _tower_forwards(model.labeller.teacher, monkeypatch)
    batched = augmented_images_labels(samples, how)
    assert sorted(forwards) == [1, 3], forwards
    assert [tuple(t.shape) for t in batched] == [(32, 48)] * 3 + [(40, 32)]
    for got, want in zip(batched, one_by_one):
        assert torch.equal(got, want)
        assert set(got.unique().tolist()) <= {2, 4, model.ignore_value}
