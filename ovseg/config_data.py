"""Config keys for the user's own data and words (custom datasets, synonyms, background) and
for the input pipeline's mmseg-style options (resize, padding, what the training crop counts)."""

from detectron2.config import CfgNode as CN


def add_data_and_words_config(cfg: CN) -> None:
    """DATASETS.CUSTOM, MODEL.OVSEG.SYNONYM_MERGE and TEST.BACKGROUND_THRESHOLD (after
    MODEL.OVSEG exists)."""
    # the user's own datasets, registered before DATASETS.TRAIN/TEST are looked up: a list of
    # registration specs ({"name", "images", "labels", "vocabulary", ...}) and/or paths to
    # registration files (.yaml/.json) holding such specs; docs/custom_dataset.md
    cfg.DATASETS.CUSTOM = []
    # a test class with synonyms ("pickup truck, truck", ADE's "road, route"): "max" = its
    # score is the maximum over its synonyms' scores, "mean" = its text embedding is the
    # mean of its synonyms' (training always uses the mean); docs/vocabulary.md measures both
    cfg.MODEL.OVSEG.SYNONYM_MERGE = "max"
    # > 0: a test vocabulary's MODEL.OVSEG.BACKGROUND_CLASS is not embedded but labels the
    # pixels whose best class probability is below this (VOC-21, PC-60); 0 = off
    cfg.TEST.BACKGROUND_THRESHOLD = 0.0


def add_input_pipeline_config(cfg: CN) -> None:
    """The training and test pipeline's mmseg-style options: INPUT.RESIZE_* (resize.py),
    INPUT.IMAGE_PAD (padding.py), INPUT.CROP.CATEGORY_COUNT (crop_count.py),
    INPUT.COLOR_AUG_HUE_RANGE (color_aug.py), all in ovseg/data/dataset_mappers/."""
    # training resize of the semantic mapper (any method) as mmseg's Resize(img_scale,
    # ratio_range) of the official MaskCLIP+ pipelines: r ~ U(RESIZE_RATIO_RANGE), the image
    # rescaled (ratio kept) to fit the box RESIZE_IMG_SCALE * r, long side in its long side;
    # [] = detectron2's ResizeShortestEdge (INPUT.MIN_SIZE_TRAIN, MAX_SIZE_TRAIN)
    cfg.INPUT.RESIZE_IMG_SCALE = []
    cfg.INPUT.RESIZE_RATIO_RANGE = [0.5, 2.0]
    # the pixels of every resize of the semantic mappers and predictors: "pil" (detectron2:
    # bilinear antialiased when shrinking, labels nearest by centre) or "opencv" (mmcv's
    # imresize: cv2 INTER_LINEAR, labels INTER_NEAREST, as the mmseg pipelines)
    cfg.INPUT.RESIZE_BACKEND = "pil"
    # the shortest-edge resizes' long side (MIN_SIZE_* / MAX_SIZE_*): "round" (detectron2's
    # ResizeShortestEdge) or "truncate" (maskrcnn_benchmark's Resize.get_size, XPM's:
    # a 640x480 image becomes 1066x800, not 1067x800)
    cfg.INPUT.RESIZE_ROUNDING = "round"
    # how training mappers pad images to INPUT.SIZE_DIVISIBILITY: "black" (0), "gray" (128,
    # Mask2Former's), or "normalized_zero" (the model pads the normalised batch with 0, the
    # pixel mean, as mmseg)
    cfg.INPUT.IMAGE_PAD = "black"
    # the labels the crop's SINGLE_CATEGORY_MAX_AREA rule counts: "training" (after the
    # zero-shot remap), "dataset" (the dataset's classes, unseen ones included: ZegCLIP),
    # "unseen_as_one" (the dataset's classes, every unseen class one class: MaskCLIP+) or
    # "classes_as_one" (every class one class: annotation-free MaskCLIP+, no window passes)
    cfg.INPUT.CROP.CATEGORY_COUNT = "training"
    # when none of the crop's 10 windows passes that rule: "last_tried" keeps the 10th
    # (detectron2), "another" draws an 11th, unchecked (mmseg's RandomCrop)
    cfg.INPUT.CROP.FALLBACK = "last_tried"
    # the hue shift's draw of INPUT.COLOR_AUG_SSD: "detectron2" [-18, 18] (Mask2Former's,
    # FreeSeg's) or "mmseg" [-18, 17] (ZegCLIP's, MaskCLIP+'s PhotoMetricDistortion)
    cfg.INPUT.COLOR_AUG_HUE_RANGE = "detectron2"
    # the semantic mappers' training augmentation: "crop" (resize, crop, colour, flip) or "lsj"
    # (flip, ResizeScale over LSJ_SCALE_RANGE of INPUT.CROP.SIZE, FixedSizeCrop; no colour)
    cfg.INPUT.TRAIN_AUGMENTATION = "crop"
    cfg.INPUT.LSJ_SCALE_RANGE = [0.1, 2.0]
    # the sliding-window grid at test: "flush" (mmsegmentation's: the last window flush with
    # the border, padding 0 = the pixel mean) or "encoding" (LSeg's PyTorch-Encoding
    # MultiEvalModule: windows at multiples of the stride, the last one cut short and every
    # window padded black)
    cfg.TEST.SLIDE_LAYOUT = "flush"
