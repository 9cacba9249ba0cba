"""Every evaluator but the semantic one (its own test) under two gloo processes: rank r scores
images r, r + 2, ... as ``train_net.py --eval-only --num-gpus 2`` shares a test set, and
rank 0 must report exactly what one process scoring every image reports."""

import json

import numpy as np
import pytest
import torch
from ovseg_testing.distributed import gloo_world
from ovseg_testing.panoptic import (
    PANOPTIC,
    instance_output,
    panoptic_output,
    registered_tiny_panoptic,
)

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Instances

from ovseg.evaluation import (
    FewShotEpisodeEvaluator,
    OpenVocabInstanceEvaluator,
    OpenVocabPanopticEvaluator,
    RegionClassificationEvaluator,
)
from ovseg.evaluation.fewshot_evaluator import RESULT_FILE

NUM_IMAGES = 5  # odd: the ranks' shares differ in size (3 and 2)
FEWSHOT, REGIONS = "dist_eval_fewshot_fold0", "dist_eval_regions"
REGION_NAMES = ["a", "b", "c", "d", "e", "f"]
CAT, DOG, SKY = 1, 2, 5  # dataset ids of the tiny panoptic set (dog unseen)
# per image: categories the model misses and its instance score; both ranks miss something
PANOPTIC_DROPS = [(), (DOG,), (CAT,), (SKY,), (DOG, SKY)]
INSTANCE_DROPS = [(), (DOG,), (CAT,), (), (DOG,)]
INSTANCE_SCORES = [1.0, 0.9, 0.8, 0.6, 0.7]


def _register_small_sets() -> None:
    MetadataCatalog.get(FEWSHOT).set(
        stuff_classes=["a", "b", "c"], novel_class_ids=[0, 2], ignore_label=255, fold=0
    )
    MetadataCatalog.get(REGIONS).set(stuff_classes=REGION_NAMES, unseen_classes=["b", "f"])


def _fewshot_io(k: int):
    """Image k's episode: a random 0/1/255 target and prediction, class k mod 3."""
    rng = np.random.default_rng(k)
    target = rng.choice([0, 1, 255], size=(4, 5), p=[0.45, 0.45, 0.1])
    pred = torch.as_tensor(rng.integers(0, 2, (4, 5)))
    scores = torch.stack([(pred == 0).float(), (pred == 1).float()])
    return {"sem_seg": torch.as_tensor(target), "episode_class": k % 3}, {"sem_seg": scores}


def _region_io(k: int):
    """Image k's two regions (classes k and 2k + 1 mod 6; b and f unseen): random logits,
    the true class's raised by 2 (k mod 3), so some regions are top-1 and some not."""
    rng = np.random.default_rng(100 + k)
    inputs, outputs = [], []
    for target in (k % 6, (2 * k + 1) % 6):
        inst = Instances((2, 2))
        inst.gt_classes = torch.tensor([target])
        inputs.append({"instances": inst, "vocabulary": REGION_NAMES})
        logits = rng.normal(size=6)
        logits[target] += 2.0 * (k % 3)
        outputs.append({"classification": torch.as_tensor(logits)})
    return inputs, outputs


def _evaluators(out_dir: str, distributed: bool) -> dict:
    return {
        "fewshot": FewShotEpisodeEvaluator(FEWSHOT, distributed=distributed, output_dir=out_dir),
        "regions": RegionClassificationEvaluator(REGIONS, distributed=distributed),
        "instance": OpenVocabInstanceEvaluator(
            PANOPTIC, output_dir=out_dir, distributed=distributed
        ),
        # detectron2's panoptic evaluator always gathers (one process: a gather of one)
        "panoptic": OpenVocabPanopticEvaluator(PANOPTIC, output_dir=out_dir),
    }


def _evaluate(images, out_dir: str, distributed: bool, skip=()) -> dict:
    """Feed ``images`` (indices) to each evaluator but those named in ``skip``, one image at
    a time; their results, and the few-shot evaluator's saved fold file."""
    by_id = {d["image_id"]: d for d in DatasetCatalog.get(PANOPTIC)}
    evaluators = _evaluators(out_dir, distributed)
    evaluators = {name: e for name, e in evaluators.items() if name not in skip}
    for evaluator in evaluators.values():
        evaluator.reset()
    for k in images:
        episode, scores = _fewshot_io(k)
        evaluators["fewshot"].process([episode], [scores])
        evaluators["regions"].process(*_region_io(k))
        image = by_id[k + 1]
        out = instance_output(k, INSTANCE_DROPS[k], INSTANCE_SCORES[k])
        evaluators["instance"].process([image], [out])
        if "panoptic" in evaluators:
            evaluators["panoptic"].process([image], [panoptic_output(k, PANOPTIC_DROPS[k])])
    results = {name: evaluator.evaluate() for name, evaluator in evaluators.items()}
    try:
        with open(f"{out_dir}/{RESULT_FILE}") as f:
            results["fewshot_file"] = json.load(f)
    except FileNotFoundError:
        results["fewshot_file"] = None
    return results


def _worker(rank: int, world_size: int, init_file: str, root: str, queue) -> None:
    """One gloo process scoring images ``rank``, ``rank + world_size``, ..."""
    with gloo_world(rank, world_size, init_file):
        _register_small_sets()
        # the parent wrote the dataset: both ranks only register it
        with registered_tiny_panoptic(root, NUM_IMAGES, write=False):
            share = range(rank, NUM_IMAGES, world_size)
            queue.put((rank, _evaluate(share, f"{root}/dist{rank}", distributed=True)))


def _assert_same(got, want, where=""):
    """Exact equality of nested results (NaN equal to NaN)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), (where, got, want)
        for key in want:
            _assert_same(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, float) and np.isnan(want):
        assert isinstance(got, float) and np.isnan(got), (where, got)
    else:
        assert got == want, (where, got, want)


@pytest.mark.slow
def test_two_processes_report_what_one_process_reports(tmp_path):
    import torch.multiprocessing as mp

    _register_small_sets()
    with registered_tiny_panoptic(tmp_path, NUM_IMAGES):
        single = _evaluate(range(NUM_IMAGES), str(tmp_path / "single"), distributed=False)
        # a panoptic evaluation missing an image's prediction raises: no share can get lost
        share = range(0, NUM_IMAGES, 2)
        rank0_share = _evaluate(share, str(tmp_path / "share0"), False, skip=("panoptic",))
        queue = mp.get_context("spawn").SimpleQueue()
        args = (2, str(tmp_path / "init"), str(tmp_path), queue)
        mp.spawn(_worker, args=args, nprocs=2, join=True)
        got = dict(queue.get() for _ in range(2))
    for name in ("fewshot", "regions", "instance", "panoptic"):
        # the test can fail: rank 0's own images alone score differently
        assert rank0_share.get(name) != single[name], name
        _assert_same(got[0][name], single[name], name)
        assert not got[1][name], (name, got[1][name])  # only rank 0 reports
    # the per-split numbers are among those compared
    assert {"top1-seen", "top1-unseen", "mACC-unseen"} <= got[0]["regions"]["classification"].keys()
    assert {"AP-seen", "AP50-unseen"} <= got[0]["instance"]["segm"].keys()
    assert {"PQ-seen", "SQ-unseen"} <= got[0]["panoptic"]["panoptic_seg"].keys()
    # every episode counted once, with the same accumulated areas
    assert got[0]["fewshot_file"]["episodes"] == NUM_IMAGES
    _assert_same(got[0]["fewshot_file"], single["fewshot_file"], "fewshot_file")
    assert got[1]["fewshot_file"] is None
