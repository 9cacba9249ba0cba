"""XPM's paper run end to end at a tiny size, in process, as the header commands of its leaves
(configs/coco/xpm/xpm_{teacher,student}_bert_ovrcnn_*.yaml) run it from a working folder:
OVR-CNN's caption pre-training (a synthetic checkpoint in its layout at the tiny widths) is
converted, the teacher trains from it, the student trains from the teacher's final weights,
labelling the COCO 48/17 training images' captions online in the teacher's BERT space over
every RPN proposal, and is evaluated on XPM's three test sets. The data are COCO's
download layout (one image per split) prepared by datasets/prepare_coco_instance_48_17.py and
registered under the leaves' own dataset names; the leaves are overridden only in size, data
and path keys, so a leaf whose settings stop chaining breaks this test."""

from __future__ import annotations

import importlib
import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from ovseg_testing import CPU_OPTS, ROOT, SMALL_OPTS, header_commands
from ovseg_testing.bert import make_tiny_bert, require_transformers
from ovseg_testing.demo import load_script
from ovseg_testing.fullsize import write_raw_coco

from detectron2.engine import default_argument_parser

from ovseg.convert.command import main as convert_main
from ovseg.data.datasets.common import datasets_root
from ovseg.data.datasets.register_coco_panoptic import register_all_coco_panoptic
from ovseg.engine.checks import check_config, check_run_files
from ovseg.engine.defaults import load_config
from ovseg.engine.pseudo_labelling import main as generate_main
from ovseg.engine.pseudo_labelling import parse_args as generate_args
from ovseg.evaluation.instance_evaluator import OpenVocabInstanceEvaluator
from ovseg.modeling.meta_arch.xpm_student import XPMStudent
from ovseg.modeling.xpm.bert import BertClassEmbeddings
from ovseg.pseudo import PseudoInstanceLabeller

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
require_transformers()

LEAVES = ROOT / "configs/coco/xpm"
TEACHER = LEAVES / "xpm_teacher_bert_ovrcnn_90k_bs8.yaml"
STUDENT = LEAVES / "xpm_student_bert_ovrcnn_70k_bs8.yaml"
TRAIN, VAL = "coco_2017_train_instance_48_17", "coco_2017_val_instance_48_17"
# the fixture's caption ("A man, a cow and a dog.") and class words, as tiny word pieces
WORDS = ["man", "cow", "dog", "person"]

# the only keys the chain overrides: the model's widths and the run's length (size), where
# the data are (DETECTRON2_DATASETS, not a key) and where BERT and caches live (path)
SIZE_KEYS = {
    "MODEL.DEVICE", "DATALOADER.NUM_WORKERS", "SOLVER.IMS_PER_BATCH", "SOLVER.MAX_ITER",
    "SOLVER.WARMUP_ITERS", "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN",
    "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "MODEL.RESNETS.WIDTH_PER_GROUP",
    "MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
}  # fmt: skip
PATH_KEYS = {"MODEL.XPM.BERT_NAME", "MODEL.CLIP.CACHE_DIR"}


def _pairs(opts):
    return list(zip(opts[::2], opts[1::2]))


def _tiny(bert: str, cache: Path) -> list:
    """The shared CPU shrinking (tests/ovseg_testing/configs.py) restricted to size keys,
    two iterations, then the paths of the tiny BERT and of the caches."""
    shared = [*CPU_OPTS, *SMALL_OPTS["XPMTeacher"], "SOLVER.MAX_ITER", "2"]
    shared += ["SOLVER.WARMUP_ITERS", "0"]
    opts = [x for k, v in _pairs(shared) if k in SIZE_KEYS for x in (k, v)]
    return [*opts, "MODEL.XPM.BERT_NAME", bert, "MODEL.CLIP.CACHE_DIR", str(cache)]


@contextmanager
def _coco_48_17(root: Path):
    """COCO as downloaded (tests/ovseg_testing/fullsize.py: person, cow, dog, a caption),
    prepared into OVR-CNN's 48/17 split and registered there, then back at the default root."""
    write_raw_coco(root)
    if str(ROOT / "datasets") not in sys.path:  # the script imports its prepare_utils
        sys.path.insert(0, str(ROOT / "datasets"))
    importlib.import_module("prepare_coco_instance_48_17").main(["--root", str(root)])
    register_all_coco_panoptic(str(root))
    try:
        yield root
    finally:
        register_all_coco_panoptic(datasets_root())


def _ovrcnn_checkpoint(path: Path, cfg, bert: str) -> dict:
    """OVR-CNN's pre-training checkpoint (tests/convert/official_ovrcnn.py) at ``cfg``'s
    widths with ``bert``'s word embeddings, saved at ``path`` as its checkpointer does."""
    convert_tests = str(ROOT / "tests/convert")
    if convert_tests not in sys.path:
        sys.path.insert(0, convert_tests)
    from official_ovrcnn import official_ovrcnn_state

    state = official_ovrcnn_state(cfg, BertClassEmbeddings(bert).table)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "optimizer": {}, "iteration": 120000}, path)
    return state


def _run(argv: list, opts: list):
    """One header command (``python <script> ...``), in process, with the overrides."""
    assert argv[0] == "python", argv
    script, args = argv[1], argv[2:]
    if script == "tools/convert_checkpoint.py":
        assert convert_main([*args, *opts]) == 0, argv
        return None
    if script == "tools/generate_pseudo_labels.py":
        return generate_main(generate_args(["--no-progress", *args, *opts]))
    assert script == "train_net.py", argv
    train_net = load_script("train_net.py")
    parsed = default_argument_parser().parse_args([*args, *opts])
    cfg = load_config(parsed.config_file, parsed.opts)  # the script's checks before launch
    check_config(cfg)
    check_run_files(cfg, eval_only=parsed.eval_only, resume=parsed.resume)
    return train_net.main(parsed)


def _count_detections(monkeypatch) -> dict:
    """Record, per evaluated set, each image's number of detections (the evaluator's
    ``process`` spied on, unchanged)."""
    counts: dict = {}
    process = OpenVocabInstanceEvaluator.process

    def spy(self, inputs, outputs):
        name = self._metadata.name
        counts.setdefault(name, []).extend(len(o["instances"]) for o in outputs)
        return process(self, inputs, outputs)

    monkeypatch.setattr(OpenVocabInstanceEvaluator, "process", spy)
    return counts


def _ap(segm: dict) -> list:
    """The AP, AP50 and AP75 values of a mask AP result, overall and per split (seen,
    unseen); per-class values are NaN for the classes the image lacks."""
    splits = ("", "-seen", "-unseen")
    return [
        v for k, v in segm.items() if k in {m + s for m in ("AP", "AP50", "AP75") for s in splits}
    ]


def _commands(leaf: Path) -> list:
    """The leaf's header commands as a user pastes them, the config paths (relative to the
    repository) made absolute: the run's own paths stay relative to the working folder."""
    return [
        [str(ROOT / a) if a.startswith("configs/") else a for a in argv]
        for argv in header_commands(leaf)
    ]


def _spy_online_labels(monkeypatch) -> list:
    """Record each online labelling of the student's steps: the labeller's text space, the
    proposals it matched against, the RPN proposals they came from, and its nouns' matches
    (:meth:`PseudoInstanceLabeller.match` and :meth:`XPMStudent.regions_of` spied on,
    unchanged)."""
    calls: list = []
    match, regions_of = PseudoInstanceLabeller.match, XPMStudent.regions_of

    def spy_match(self, image, captions, proposals, **kwargs):
        found = match(self, image, captions, proposals, **kwargs)
        calls[-1]["matched"].append((self, len(proposals), found))
        return found

    def spy_regions(self, features, proposals, *args, **kwargs):
        calls.append({"rpn": [len(p) for p in proposals], "matched": []})
        return regions_of(self, features, proposals, *args, **kwargs)

    monkeypatch.setattr(PseudoInstanceLabeller, "match", spy_match)
    monkeypatch.setattr(XPMStudent, "regions_of", spy_regions)
    return calls


def _check_online_labels(calls: list, bert: str, steps: int) -> None:
    """Every step labelled the training image: the caption's nouns matched in BERT's space by
    the raw dot product over every RPN proposal, one pseudo instance per noun."""
    assert len(calls) == steps, calls
    space = BertClassEmbeddings(bert).fingerprint()
    for call in calls:  # the batch's images: the one training image, repeated
        assert call["rpn"] == [c for _, c, _ in call["matched"]]  # every proposal a candidate
        for labeller, candidates, found in call["matched"]:
            assert candidates > 0 and labeller.region_embedding == "teacher"
            assert labeller.bert.fingerprint() == space
            nouns = [n for n, _ in found.nouns]
            assert {"cow", "dog"} <= set(nouns), nouns  # LVIS names of the caption's nouns
            assert len(found.proposals) == len(nouns)  # one pseudo instance per noun


def _check_evaluation(results: dict, detections: dict) -> None:
    """XPM's three sets evaluated, each on its image over its classes; AP numbers wherever the
    student detected something."""
    assert list(results) == [f"{VAL}_unseen", f"{VAL}_seen", VAL]
    # the val image (person, cow, dog) belongs to every set
    assert [len(detections[name]) for name in results] == [1, 1, 1], detections
    for name, res in results.items():
        segm = res["segm"]
        if sum(detections[name]):
            assert all(math.isfinite(v) and 0 <= v <= 100 for v in _ap(segm)), json.dumps(segm)
        else:  # a 2-iteration student may detect nothing: detectron2 reports NaN then
            assert all(math.isnan(v) for v in _ap(segm)), (name, segm)
    assert set(results[VAL]["segm"]) >= {"AP-seen", "AP-unseen"}  # the generalized set


def test_the_paper_leaves_chain_from_ovrcnn_to_the_student_evaluation(tmp_path, monkeypatch):
    work = tmp_path / "work"  # the user's working folder: the headers' relative paths
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    bert = make_tiny_bert(tmp_path / "bert", words=WORDS)
    opts = _tiny(bert, tmp_path / "cache")
    assert {k for k, _ in _pairs(opts)} <= SIZE_KEYS | PATH_KEYS
    convert, train_teacher = _commands(TEACHER)
    train_student, evaluate = _commands(STUDENT)

    with _coco_48_17(tmp_path / "datasets"):
        # 1. OVR-CNN's pre-training, where the header's --input reads it, converted
        teacher_cfg = load_config(str(TEACHER), opts)
        source = convert[convert.index("--input") + 1]
        official = _ovrcnn_checkpoint(work / source, teacher_cfg, bert)
        _run(convert, opts)
        converted = torch.load(teacher_cfg.MODEL.WEIGHTS)["model"]  # the leaf reads that file
        stem = official["module.backbone.body.stem.conv1.weight"].flip(1)  # BGR -> RGB
        assert torch.equal(converted["backbone.stem.conv1.weight"], stem)
        v2l = official["module.mmss_heads.GroundingHead.v2l_projection.weight"]
        assert torch.equal(converted["roi_heads.box_predictor.projection.weight"], v2l)

        # 2. the teacher trains from them: the frozen stem and projection keep them, res4 moves
        _run(train_teacher, opts)
        teacher_dir = Path(teacher_cfg.OUTPUT_DIR)
        teacher = torch.load(teacher_dir / "model_final.pth")["model"]
        for key in ("backbone.stem.conv1.weight", "roi_heads.box_predictor.projection.weight",
                    "roi_heads.box_predictor.projection.bias"):  # fmt: skip
            assert torch.equal(teacher[key], converted[key]), key
        moved = "backbone.res4.0.conv1.weight"
        assert not torch.equal(teacher[moved], converted[moved])

        # 3. the student trains from the teacher's final weights, labelling captions online
        student_cfg = load_config(str(STUDENT), opts)
        assert student_cfg.MODEL.XPM.TEACHER_WEIGHTS == str(teacher_dir / "model_final.pth")
        assert student_cfg.MODEL.XPM.PROPOSE_TOPK == 0  # the leaf's, not an override
        assert student_cfg.MODEL.XPM.PSEUDO_LABEL_SOURCE == "online"
        assert not student_cfg.DATASETS.PSEUDO_LABELS  # no store is made or read
        online = _spy_online_labels(monkeypatch)
        _run(train_student, opts)
        _check_online_labels(online, bert, student_cfg.SOLVER.MAX_ITER)
        final = Path(student_cfg.OUTPUT_DIR) / "model_final.pth"
        student = torch.load(final)["model"]
        # started from the teacher: its backbone (frozen) is the teacher's final one, its
        # projection learns again; the frozen teacher copy is not saved
        assert torch.equal(student[moved], teacher[moved])
        projection = "roi_heads.box_predictor.projection.weight"
        assert not torch.equal(student[projection], teacher[projection])
        assert not any(k.startswith("teacher_roi_heads.") for k in student)

        # 4. a store from the same leaf still works (tools/generate_pseudo_labels.py)
        store = work / "output/pseudo_labels/xpm_student_bert_store"
        generate = ["python", "tools/generate_pseudo_labels.py", "--config-file", str(STUDENT),
                    "--output", str(store)]  # fmt: skip
        assert _run(generate, opts) == {"total": 1, "written": 1, "skipped": 0}

        # 5. evaluated from its final weights (--eval-only): mask AP on XPM's three sets
        assert "--eval-only" in evaluate
        assert evaluate[evaluate.index("MODEL.WEIGHTS") + 1] == str(final)
        detections = _count_detections(monkeypatch)
        results = _run(evaluate, opts)
    _check_evaluation(results, detections)
