"""What the suite measures, and in which order: the GPU table's rows (the paper configs), the
toy rows of a smoke run, and the order that puts first what a deadline must not cut."""

from __future__ import annotations

import functools
from typing import Any, List

__all__ = ["GOAL_ROWS", "GPU_ITEMS", "LOSS_FN_STUDENTS", "TOY_ITEMS", "TOY_SLIDE"]

_ZEG = "configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml"
# synthetic batches carry their own "pseudo_sem_seg": no store folder is read; only the
# augmented-crop source takes the student's input normalisation
_NO_STORE = ("DATASETS.PSEUDO_LABELS", "")
_STORE = ("MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE", "store", *_NO_STORE,
          "MODEL.MASKCLIP_PLUS.TEACHER_INPUT_NORMALIZATION", "clip")  # fmt: skip
_MCP = "configs/voc/maskclip_plus/"
_XPM = "configs/coco/xpm/xpm_"
# random weights: the XPM detector's losses diverge by the second SGD step without the
# ImageNet backbone (lr 0 keeps them finite; the step does the same work)
_XPM_RANDOM = ("SOLVER.BASE_LR", "0.0")
# (name, config, train?, overrides[, frozen submodules[, inference batch]]); every train row
# is also timed at inference (batch 1, as detectron2's test loader); FreeSeg's main stage
# takes the prompt stage's tokens frozen (its text cached)
GPU_ITEMS = (
    ("LSeg ViT-L/16 (paper)", "configs/voc/lseg/lseg_vitl16_inductive_20k_bs16.yaml", True, ()),
    ("LSeg CLIP ViT-B/16 (variant)",
     "configs/voc/lseg/lseg_vitb16_inductive_20k_bs16_ovseg-variant.yaml", True, ()),
    ("LSeg R101", "configs/voc/lseg/lseg_r101_inductive_20k_bs16.yaml", True, ()),
    ("LSeg R101 channels-last", "configs/voc/lseg/lseg_r101_inductive_20k_bs16.yaml", True,
     ("MODEL.CHANNELS_LAST", "True")),
    ("ZegCLIP ViT-B/16", _ZEG, True, ()),
    # the same step with torch's nn.MultiheadAttention (the tower's projections as products
    # batched over the tokens): the token-major attention's gain, in the same run
    ("ZegCLIP ViT-B/16 torch attention", _ZEG, True,
     ("MODEL.CLIP.TOKEN_MAJOR_ATTENTION", "False")),
    # the step with its focal and dice losses eager (the default compiles the loss alone on
    # CUDA): what the loss's full-size element-wise passes cost, in the same run
    ("ZegCLIP ViT-B/16 eager loss", _ZEG, True, ("MODEL.COMPILE_LOSS", "never")),
    # every switch on, the goal row: CUDA graphs for the host-bound step and the frozen tower
    # cast once (it runs second, after the eager row: GOAL_ROWS; the other compiled rows last)
    ("ZegCLIP ViT-B/16 compiled CUDA graphs frozen bf16", _ZEG, True,
     ("MODEL.COMPILE", "True", "MODEL.COMPILE_MODE", "reduce-overhead",
      "MODEL.CLIP.FROZEN_DTYPE", "bfloat16")),
    ("ZegCLIP ViT-B/16 compiled", _ZEG, True, ("MODEL.COMPILE", "True")),
    # the chip's inference throughput: 16 images of one size share a forward
    ("ZegCLIP ViT-B/16 inference batch 16", _ZEG, False, ("MODEL.CLIP.FROZEN_DTYPE", "bfloat16"),
     (), 16),
    # the first row's batch-1 inference with a test image's windows in one forward (two for
    # VOC's 512 x 683): its slide figure against the first row's
    ("ZegCLIP ViT-B/16 inference windows stacked", _ZEG, False,
     ("TEST.SLIDE_WINDOWS_PER_FORWARD", "4")),
    # the same with the backbone and decoder compiled into CUDA graphs (whole and slide, each
    # compiled on its first call); the compiled rows run last
    ("ZegCLIP ViT-B/16 inference batch 16 compiled CUDA graphs", _ZEG, False,
     ("MODEL.COMPILE", "True", "MODEL.COMPILE_MODE", "reduce-overhead",
      "MODEL.CLIP.FROZEN_DTYPE", "bfloat16"), (), 16),
    ("MaskCLIP+ RN50>R101 teacher in loop",
     _MCP + "maskclip_plus_rn50_r101_deeplabv2_transductive_20k_bs16.yaml", True, ()),
    ("MaskCLIP+ RN50>R101 store",
     _MCP + "maskclip_plus_rn50_r101_deeplabv2_transductive_20k_bs16.yaml", True,
     _STORE),
    ("MaskCLIP+ ViT-B/16>R50 annotation-free",
     _MCP + "maskclip_plus_vitb16_r50_deeplabv2_annofree_2k_bs16.yaml", True, ()),
    ("FreeSeg R101c COCO all-task", "configs/coco/freeseg/freeseg_r101c_alltask_60k_bs32.yaml",
     True, (), ("prompt",)),
    ("XPM teacher COCO", _XPM + "teacher_vitb16_90k_bs8.yaml", True, _XPM_RANDOM),
    ("XPM student COCO", _XPM + "student_vitb16_70k_bs8.yaml", True, _XPM_RANDOM),
    ("MaskCLIP ViT-B/16", "configs/voc/maskclip/maskclip_vitb16_bs1.yaml", False, ()),
    ("MaskCLIP RN50", "configs/voc/maskclip/maskclip_rn50_bs1.yaml", False, ()),
)  # fmt: skip
_TOY_MCP = "configs/toy/maskclip_plus_toyrn_r18_transductive_300+300_bs16.yaml"
TOY_ITEMS = (
    ("LSeg toy RN", "configs/toy/lseg_toyrn_400_bs8.yaml", True, ()),
    ("ZegCLIP toy ViT", "configs/toy/zegclip_toyvit_inductive_1200_bs16.yaml", True, ()),
    ("ZegCLIP toy ViT inference batch 4", "configs/toy/zegclip_toyvit_inductive_1200_bs16.yaml",
     False, (), (), 4),
    ("MaskCLIP+ toy teacher in loop", _TOY_MCP, True,
     ("MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE", "online_augmented", *_NO_STORE)),
    ("MaskCLIP+ toy store", _TOY_MCP, True,
     ("MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE", "store", *_NO_STORE)),
    ("FreeSeg toy RN", "configs/toy/freeseg_toyrn_alltask_2400_bs8.yaml", True, ()),
    ("XPM teacher toy RN", "configs/toy/xpm_teacher_toyrn_600_bs8.yaml", True, ()),
    ("XPM student toy RN", "configs/toy/xpm_student_toyrn_600_bs8.yaml", True, ()),
    ("MaskCLIP toy", "configs/toy/maskclip.yaml", False, ()),
)  # fmt: skip


# the toy configs test whole images and keep the default 512 window: a smoke run slides the
# toy's own 64-pixel window instead (its 64 x 85 test image padded to 512 x 512 was 48x the
# pixels, 16k tokens for the toy ViT at patch stride 4); the command's own KEY VALUE go after
TOY_SLIDE = ("TEST.SLIDE_WINDOW", "(64, 64)", "TEST.SLIDE_STRIDE", "(48, 48)")


# the students that declare a ``loss_fn``: MODEL.COMPILE_LOSS "auto" compiles it on CUDA
LOSS_FN_STUDENTS = ("ZegCLIP", "LSeg")


def _compiles(item) -> bool:
    """Whether a row compiles: MODEL.COMPILE rows ("compiled" in the name), and the training
    rows of :data:`LOSS_FN_STUDENTS` unless they keep the loss eager (MODEL.COMPILE_LOSS
    "auto" compiles it on CUDA, in the row's first step)."""
    name, _, train, opts = item[:4]
    return "compiled" in name or (
        name.startswith(LOSS_FN_STUDENTS) and train and "MODEL.COMPILE_LOSS" not in opts
    )


# the goals: ZegCLIP's eager step, the goal row (every switch on) and the chip's
# inference throughput; they run first, whatever the items' order
GOAL_ROWS = (
    "ZegCLIP ViT-B/16",
    "ZegCLIP ViT-B/16 compiled CUDA graphs frozen bf16",
    "ZegCLIP ViT-B/16 inference batch 16",
)


@functools.cache
def _student(config: str) -> str:
    """The config's meta-architecture: the student a row measures."""
    from ..engine.defaults import load_config

    return load_config(config, ["MODEL.DEVICE", "cpu"]).MODEL.META_ARCHITECTURE


def _run_order(items) -> List[Any]:
    """What a deadline must not cut comes first: the goal rows (:data:`GOAL_ROWS`), then one
    row per student (meta-architecture) not yet in, then the first row of every other config,
    then the profile (``None`` in the list), then the variants' eager rows and the compiled
    ones last. The table keeps the items' order."""
    goal = [i for name in GOAL_ROWS for i in items if i[0] == name]
    firsts, seen = [], {i[1] for i in goal}
    for i in items:
        if i[1] not in seen and "compiled" not in i[0]:
            seen.add(i[1])
            firsts.append(i)
    students, in_table = [], {_student(i[1]) for i in goal}
    for i in firsts:
        if _student(i[1]) not in in_table:
            in_table.add(_student(i[1]))
            students.append(i)
    head = goal + students + [i for i in firsts if i not in students]
    rest = [i for i in items if i not in head]
    eager = [i for i in rest if "compiled" not in i[0]]
    return head + [None] + eager + [i for i in rest if i not in eager]
