"""Config keys of the mask-classification machinery (ovseg/modeling/mask_classification),
named as Mask2Former's (mask2former/config.py) where it has them; defaults reproduce FreeSeg
@7707335 (configs/coco-stuff-164k-171/mask2former_R50_bs32_60k.yaml and its children)."""

from detectron2.config import CfgNode as CN


def add_mask_classification_config(cfg: CN) -> None:
    """MODEL.MASK_FORMER and the pixel decoder's MODEL.SEM_SEG_HEAD keys."""
    head = cfg.MODEL.SEM_SEG_HEAD
    # the pixel decoder, by name in detectron2's SEM_SEG_HEADS_REGISTRY; it reads
    # SEM_SEG_HEAD.IN_FEATURES (res2-res5), CONVS_DIM (FreeSeg 256), NORM ("GN") and
    # COMMON_STRIDE (4: FPN steps down to stride 4)
    head.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    # channels of the per-pixel mask features
    head.MASK_DIM = 256
    # deformable-attention encoder: layers, input features, heads, sampled points per head
    # and level, FFN width (hard-coded 1024 officially, msdeformattn.py:306); its dropout is
    # MODEL.MASK_FORMER.DROPOUT
    head.TRANSFORMER_ENC_LAYERS = 6
    head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024

    mf = cfg.MODEL.MASK_FORMER = CN()
    # ---- transformer decoder: query width, queries, heads, FFN width, pre-norm layers
    mf.HIDDEN_DIM = 256
    mf.NUM_OBJECT_QUERIES = 100
    mf.NHEADS = 8
    mf.DIM_FEEDFORWARD = 2048
    mf.PRE_NORM = False
    # masked-attention layers built (FreeSeg 10, open_transformer_predictor.py:75; note that
    # Mask2Former builds DEC_LAYERS - 1 from the same key)
    mf.DEC_LAYERS = 10
    # project the multi-scale maps even when they are HIDDEN_DIM wide
    mf.ENFORCE_INPUT_PROJ = False
    # dropout of the pixel decoder's encoder (the decoder's is 0, as official)
    mf.DROPOUT = 0.1
    # pad the batched images to a multiple of this
    mf.SIZE_DIVISIBILITY = 32
    # ---- loss: matcher costs and loss weights (CE, sigmoid focal, dice), no-object CE weight
    mf.CLASS_WEIGHT = 1.0
    mf.MASK_WEIGHT = 20.0
    mf.DICE_WEIGHT = 5.0
    mf.NO_OBJECT_WEIGHT = 0.1
    # supervise the intermediate predictions, only the first NUM_AUX_LOSSES of them (-1 = all);
    # FreeSeg weights 0..8 of its 10 (the 10th computed and dropped): 9 reproduces it
    mf.DEEP_SUPERVISION = True
    mf.NUM_AUX_LOSSES = -1
    # ---- inference (ovseg/modeling/mask_classification/inference.py)
    mf.TEST = CN()
    # (Mask2Former's TEST.SEMANTIC_ON / INSTANCE_ON / PANOPTIC_ON are not keys here: the tasks
    # evaluated are MODEL.FREESEG.TEST_TASKS; naming them fails with that key, RENAMED_KEYS)
    # panoptic: drop queries scoring at most this (Mask2Former 0.8; FreeSeg none: 0.0, its
    # all-task configs set 0.5 but its panoptic inference never reads it, only dropping
    # no-object: open_vocabulary_model.py:494-495)
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.0
    # drop things scoring below this (FreeSeg 0.5, open_vocabulary_model.py:528 and :618)
    mf.TEST.THING_SCORE_THRESHOLD = 0.5
    # drop a segment whose kept area / own area is below this (FreeSeg 0.5)
    mf.TEST.OVERLAP_THRESHOLD = 0.5
    # panoptic/instance scores = softmax(probabilities / T) (FreeSeg 0.01); 0 = the
    # probabilities themselves (Mask2Former)
    mf.TEST.SCORE_TEMPERATURE = 0.01
    # which pixels a panoptic segment keeps: "class" (the semantic argmax is its class,
    # FreeSeg) or "query" (the score-weighted query argmax is it, Mask2Former)
    mf.TEST.PIXEL_ASSIGNMENT = "class"
    # instances: "freeseg" (one class per query, thresholds above, per-class suppression of
    # a mask covering others) or "topk" (Mask2Former: top TEST.DETECTIONS_PER_IMAGE pairs)
    mf.TEST.INSTANCE_MODE = "freeseg"
    # reproduce the released FreeSeg instance inference's defects (last class dropped, stale
    # grouping class, logits thresholded at 0.5) instead of the corrected version
    mf.TEST.OFFICIAL_INSTANCE_DEFECTS = False
    # reproduce the released FreeSeg panoptic inference's drop of every query whose class is
    # the one indexed by the number of training classes (keep = labels.ne(num_classes),
    # open_vocabulary_model.py:494-495): no-op on COCO (156 training, 133 test classes), on
    # ADE20K (135, 150) "vase" is never a segment
    mf.TEST.OFFICIAL_PANOPTIC_DROP = False
