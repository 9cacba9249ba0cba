"""Config keys of the XPM-style teacher and student (ovseg/modeling/xpm,
meta_arch/xpm*.py); defaults reproduce hbdat/cvpr22_cross_modal_pseudo_labeling @b460423."""

from detectron2.config import CfgNode as CN


def add_xpm_config(cfg: CN) -> None:
    """MODEL.XPM: the text-embedding classifier, the student's noise-aware pseudo losses."""
    cfg.MODEL.XPM = CN()
    # tau of the box classifier's logits tau * cos(projected RoI feature, CLIP text); the
    # official dot product of unnormalised BERT-space vectors has no temperature
    cfg.MODEL.XPM.LOGIT_SCALE = 1 / 0.07
    # weight of the background class in the box classification CE (official
    # LOSS_WEIGHT_BACKGROUND 0.2, configs/coco_cap_det/zeroshot_mask.yaml:27)
    cfg.MODEL.XPM.BACKGROUND_WEIGHT = 0.2
    # proposals per image XPMTeacher.propose keeps, by RPN objectness (0: every proposal, as
    # the official matching; REGION_EMBEDDING "crop" / "pool" paste every one's mask at image
    # size, hence the cap; "teacher" computes the matched proposals' masks only)
    cfg.MODEL.XPM.PROPOSE_TOPK = 100
    # REGION_EMBEDDING "teacher": a pseudo mask is the mask head's at the pseudo box refined
    # once more by the box head, pasted at the pseudo box, as the official mask pass runs the
    # box head again on the pseudo boxes (False: at the pseudo box itself)
    cfg.MODEL.XPM.PSEUDO_MASK_REFINE = False
    # init of the class-agnostic mask logit predictor: > 0 draws its weights from N(0, std)
    # (official 1.0: kaiming fan-out of its two-output predictor); 0 kaiming fan-out of the
    # one output here (std sqrt(2))
    cfg.MODEL.XPM.MASK_PREDICTOR_STD = 0.0
    # the teacher checkpoint the student starts from ("" = random init, for tests only)
    cfg.MODEL.XPM.TEACHER_WEIGHTS = ""
    # iteration at which the student's noise head stops learning; < 0 never (official
    # UNCERTAINTY_TRAIN_ITER 10000, maskrcnn_benchmark/config/defaults.py:45)
    cfg.MODEL.XPM.NOISE_FREEZE_ITER = 10000
    # the pseudo losses other than the mask's are multiplied by this / mean(sigma)
    # (official 0.01, detector/st_generalized_rcnn.py:338)
    cfg.MODEL.XPM.PSEUDO_LOSS_SCALE = 0.01
    # box regression on pseudo RoIs (the official code computes it, the author says it is
    # not meant to be used: off)
    cfg.MODEL.XPM.PSEUDO_BOX_REG = False
    # with the LVIS caption vocabulary, the official quirk: LVIS id 0 ("aerosol can") is the
    # pseudo pass's background, its instances train as background and its text gives the
    # background logit (detector/st_generalized_rcnn.py:257-258, 329-330)
    cfg.MODEL.XPM.LVIS_BACKGROUND_QUIRK = False
    # RoIAlign runs as a matrix product of bilinear sampling weights (same numbers as
    # torchvision's, ovseg/modeling/xpm/roi_align.py) on CPU feature maps of at most this many
    # pixels, where torchvision's CPU backward is far slower; 0 = torchvision's always
    cfg.MODEL.XPM.ROI_ALIGN_MATMUL_MAX_PIXELS = 256
    # the classes the box classifier scores: "clip" (tau * cos against CLIP text) or "bert",
    # the official checkpoints' (mean of bert-base-uncased's input word-piece embeddings of
    # the name, scored by the raw dot product; the student normalises them: ovseg/modeling/
    # xpm/bert.py); "bert" needs transformers (pip install -e .[xpm-official])
    cfg.MODEL.XPM.CLASS_EMBEDDING = "clip"
    # the BERT of CLASS_EMBEDDING "bert": a Hugging Face name or a save_pretrained folder
    cfg.MODEL.XPM.BERT_NAME = "bert-base-uncased"
    # the official checkpoints' maskrcnn_benchmark +1-pixel box conventions (xpm/legacy.py)
    cfg.MODEL.XPM.LEGACY_BOXES = False
    # ground truth of training as the official COCO loader's: the annotations' polygons and
    # "bbox" (maskrcnn_benchmark/data/datasets/coco.py:111-130), moved with LEGACY_BOXES's
    # conventions, instead of bitmasks and their extents (ovseg/data/dataset_mappers/
    # gt_polygons.py); needs polygon annotations
    cfg.MODEL.XPM.GT_POLYGONS = False
    # the box predictor's projection (RoI feature -> class-embedding space) gets no gradient:
    # the official teacher keeps OVR-CNN's caption-pretrained vision-to-language projection
    # fixed (FREEZE_EMB_PRED, configs/coco_cap_det/zeroshot_mask.yaml:30; maskrcnn_benchmark/
    # modeling/roi_heads/box_head/roi_box_predictors.py:29-31)
    cfg.MODEL.XPM.FREEZE_PROJECTION = False
