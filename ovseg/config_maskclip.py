"""Config keys of MaskCLIP (training-free) and MaskCLIP+ with its DeepLab student
(ovseg/modeling/meta_arch/maskclip*.py)."""

from detectron2.config import CfgNode as CN


def add_maskclip_config(cfg: CN) -> None:
    """MODEL.MASKCLIP: training-free MaskCLIP (ovseg/modeling/meta_arch/maskclip.py); its
    temperature is MODEL.CLIP.LOGIT_SCALE, its inference size and mode TEST.*."""
    cfg.MODEL.MASKCLIP = CN()
    # prompt denoising: drop a class whose largest softmax(LOGIT_SCALE * cosine) probability
    # over an image is below PROMPT_DENOISE_THRESHOLD (paper: 0.5)
    cfg.MODEL.MASKCLIP.PROMPT_DENOISE = False
    # the largest probability a class needs somewhere in the image to be kept
    cfg.MODEL.MASKCLIP.PROMPT_DENOISE_THRESHOLD = 0.5
    # key smoothing: locations less confident than KEY_SMOOTHING_THRESHOLD get their scores
    # replaced by the last attention layer's key affinity (k k^T) times the probabilities
    cfg.MODEL.MASKCLIP.KEY_SMOOTHING = False
    # confidence below which a location is smoothed (official configs: 1.0, nearly all)
    cfg.MODEL.MASKCLIP.KEY_SMOOTHING_THRESHOLD = 1.0
    # how keys are L2-normalised: "positions" (official code: each channel over the
    # locations) or "channels" (each location's key: cosine affinity, as in the paper)
    cfg.MODEL.MASKCLIP.KEY_NORMALIZATION = "positions"
    # without key smoothing: "sem_seg" holds the logits, upsampled as the official head's
    # cosines before mmseg's softmax (False: the softmax probabilities are upsampled)
    cfg.MODEL.MASKCLIP.UPSAMPLE_LOGITS = False
    # resize the cell grid onto the input (padded to INPUT.SIZE_DIVISIBILITY only), as mmseg's
    # encode_decode (False: each cell upsampled onto the pixels it covers, then cropped)
    cfg.MODEL.MASKCLIP.STRETCH_GRID = False
    # pad the input to a multiple of the tower's stride (the official ViT's corner padding);
    # False: the tower rounds down itself, as the official ResNet (needs STRETCH_GRID)
    cfg.MODEL.MASKCLIP.PAD_TO_STRIDE = True


def add_maskclip_plus_config(cfg: CN) -> None:
    """MODEL.MASKCLIP_PLUS (ovseg/modeling/meta_arch/maskclip_plus*.py) and its DeepLab
    student (heads/deeplab.py, backbone/resnet_deeplab.py; keys named as detectron2's
    projects/DeepLab). The student's text classifier is MODEL.OVSEG.{LOGIT_SCALE, BG_EMBED},
    its second phase starts at MODEL.OVSEG.SELF_TRAINING.START_ITER."""
    cfg.MODEL.MASKCLIP_PLUS = CN()
    # where the teacher's pseudo-labels come from: "store" (DATASETS.PSEUDO_LABELS), "online"
    # (teacher in the loop on the original image, moved onto the crop by the sample's
    # "transforms": equal to the store) or "online_augmented" (teacher on the crop, official)
    cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE = "store"
    # classes the teacher (and the self-training student) score: "unseen" (official: argmax
    # over the unseen classes) or "all" (whole vocabulary; a pixel keeps the label only if it
    # is unseen: leaves unlabelled background such as VOC-20's alone)
    cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_CLASSES = "unseen"
    # teacher confidence (MaskCLIP probability) below which a pixel stays ignored; must equal
    # the store's --threshold
    cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD = 0.0
    # no ground truth at all: every pixel's target comes from the teacher / the student
    cfg.MODEL.MASKCLIP_PLUS.ANNOTATION_FREE = False
    # the student's confidence (softmax over the scored classes) needed for a self-label
    cfg.MODEL.MASKCLIP_PLUS.SELF_TRAINING_THRESHOLD = 0.0
    # weight of the L1 distillation of the student's embeddings to CLIP's dense ones; 0 = off
    cfg.MODEL.MASKCLIP_PLUS.DISTILL_WEIGHT = 0.0
    # pixels that get a pseudo-label: "ignore" (every pixel without ground truth; needs
    # ZERO_SHOT_SETTING "transductive" unless ANNOTATION_FREE) or "unseen" (official: those whose
    # ground truth is an unseen class, annotation-free any class, void stays ignored; needs
    # ZERO_SHOT_SETTING "none": the unseen labels only locate the pixels)
    cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_PIXELS = "ignore"
    # L2-normalise the student's pixel embeddings (cosine x MODEL.OVSEG.LOGIT_SCALE); False =
    # the official raw dot product with the text embeddings (with LOGIT_SCALE 1.0)
    cfg.MODEL.MASKCLIP_PLUS.NORMALIZE_EMBEDDINGS = True
    # the cross-entropy is summed and divided by the "valid" pixels (with a target) or by "all"
    # pixels of the padded batch (mmseg's mean, ignored pixels counted: the official loss)
    cfg.MODEL.MASKCLIP_PLUS.LOSS_NORMALIZATION = "valid"
    # the "online_augmented" teacher normalises the crop with "clip" (CLIP's mean/std) or
    # "student" (MODEL.PIXEL_MEAN/STD: the official code feeds CLIP the student's input)
    cfg.MODEL.MASKCLIP_PLUS.TEACHER_INPUT_NORMALIZATION = "clip"
    # std of the normal initialisation of the learnable background (MODEL.OVSEG.BG_EMBED);
    # 0 = the text classifier's own (std 0.02); official: 1.0 (torch.randn)
    cfg.MODEL.MASKCLIP_PLUS.BG_EMBED_INIT_STD = 0.0
    # the student's "sem_seg" holds its logits, resized to the output size before any softmax
    # (mmseg's whole_inference); False: its softmax probabilities are resized
    cfg.MODEL.MASKCLIP_PLUS.UPSAMPLE_LOGITS = False
    # DeepLab heads (DeepLabV2Head, DeepLabV3PlusHead): ASPP width, dilations (v2: any
    # number of 3x3 branches; v3+: three), dropout after ASPP
    cfg.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS = 512
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [6, 12, 18, 24]
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DROPOUT = 0.0
    # DeepLabv3+ decoder: finer features fused after ASPP and their 1x1 projection widths
    cfg.MODEL.SEM_SEG_HEAD.PROJECT_FEATURES = ["res2"]
    cfg.MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS = [48]
    # depthwise-separable 3x3 convolutions in ASPP and the v3+ decoder (the paper's)
    cfg.MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV = False
    # end with a 1x1 convolution to the output width; False = the last (ReLU'd) map is the
    # output and is as wide as it (official MaskCLIP+: ASPP width = embedding size)
    cfg.MODEL.SEM_SEG_HEAD.OUTPUT_PROJECTION = True
    # build_resnet_deeplab_backbone: "basic" (7x7) or "deeplab" (three 3x3, ResNet-V1c) stem
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"
    # dilation of res4 (1 or 2; 2 with RES5_DILATION 4 gives output stride 8)
    cfg.MODEL.RESNETS.RES4_DILATION = 1
    # per-block multipliers of res5's dilation (DeepLabv3: [1, 2, 4]; v2: [1, 1, 1])
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]
    # the first block of a dilated stage takes half its dilation (mmseg's ResNetV1c
    # contract_dilation: res4 starts at 1, res5 at 2), without multi-grid only
    cfg.MODEL.RESNETS.CONTRACT_DILATION = False
