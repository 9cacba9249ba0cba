"""Every config key ovseg adds to detectron2's defaults, each with its default and meaning."""

from detectron2.config import CfgNode as CN

from .config_data import add_data_and_words_config, add_input_pipeline_config
from .config_freeseg import add_freeseg_config
from .config_mask_classification import add_mask_classification_config
from .config_maskclip import add_maskclip_config, add_maskclip_plus_config
from .config_xpm import add_xpm_config
from .config_xpm_data import add_xpm_data_config


def add_ovseg_config(cfg: CN) -> None:
    """Add ovseg's keys to a detectron2 config in place.

    Args:
        cfg (CfgNode): a config made by ``detectron2.config.get_cfg()``.
    """
    # Python modules (dotted names) imported before the rest of the config is read: your own
    # student, heads or datasets, registered by the module, with its keys added by its
    # add_config(cfg) if it has one (ovseg/engine/extensions.py, docs/new_student.md)
    cfg.EXTENSIONS = []
    add_teacher_config(cfg)
    add_shared_config(cfg)
    add_poly_schedule_config(cfg)
    add_accumulation_config(cfg)
    add_text_embeddings_file_config(cfg)
    add_test_aug_config(cfg)
    add_maskclip_config(cfg)
    add_lseg_config(cfg)
    add_zegclip_config(cfg)
    add_maskclip_plus_config(cfg)
    add_episode_config(cfg)
    add_freeseg_config(cfg)
    add_mask_classification_config(cfg)
    add_xpm_config(cfg)
    add_speed_config(cfg)
    add_xpm_data_config(cfg)
    add_data_and_words_config(cfg)
    add_input_pipeline_config(cfg)
    for old, new in RENAMED_KEYS.items():
        cfg.register_renamed_key(old, new)


def add_teacher_config(cfg: CN) -> None:
    """MODEL.CLIP: the shared frozen CLIP teacher (ovseg/clip)."""
    cfg.MODEL.CLIP = CN()
    # open_clip model name (e.g. "ViT-B-16", "RN50") or a path to a JSON model config
    # (open_clip's {"embed_dim", "vision_cfg", "text_cfg"} layout) for tiny models.
    cfg.MODEL.CLIP.MODEL_NAME = "ViT-B-16"
    # open_clip pretrained tag ("openai", "laion2b_s34b_b88k"), a local checkpoint path,
    # or "" for random initialisation (a warning is logged: no knowledge to distil).
    cfg.MODEL.CLIP.PRETRAINED = "openai"
    # where downloaded weights and text-embedding caches live; "" = $OVSEG_CACHE or
    # ~/.cache/ovseg.
    cfg.MODEL.CLIP.CACHE_DIR = ""
    # prompt-template set for text embeddings: "single", "imagenet80", "vild", "maskclip85",
    # "zegclip_single", "zegclip_multi", "name" (the bare class name, LSeg's)
    # (ovseg/clip/templates.py), or a path to a JSON list of templates with one "{}" each.
    cfg.MODEL.CLIP.TEMPLATES = "single"
    # the text embedded for a class instead of its display name, where an official
    # implementation used other words: "" (the names as they are), a builtin map's name
    # (ovseg/data/prompt_names/<name>.json) or a JSON file {"display name": "prompt name"}
    cfg.MODEL.CLIP.PROMPT_NAMES = ""
    # precision of the frozen teacher's forward passes on GPU: "fp32", "bf16" or "fp16".
    cfg.MODEL.CLIP.PRECISION = "fp32"
    # the frozen image tower's linear/convolution/attention weights: "" = as loaded (fp32),
    # "bfloat16" = cast once at build, as bf16 autocast would cast them at every use (for
    # SOLVER.AMP.DTYPE bf16); the tower then runs under bf16 autocast in evaluation too
    cfg.MODEL.CLIP.FROZEN_DTYPE = ""
    # open_clip's batch-first self-attention under grad with one matrix product per
    # projection (ovseg/clip/attention.py: the same values; torch's projects transposed
    # tokens as a product batched over them when the weights are frozen); False: torch's own
    cfg.MODEL.CLIP.TOKEN_MAJOR_ATTENTION = True
    # the temperature of the teacher's own classification, softmax(LOGIT_SCALE * cosine):
    # CLIP's trained value (100) for MaskCLIP and the pseudo-labelling teacher
    cfg.MODEL.CLIP.LOGIT_SCALE = 100.0
    # a checkpoint records its CLIP teacher (model config and weights by content); loading it
    # whole (evaluation, the demo, --resume, a run's weights) with another teacher is refused,
    # unless True: then a warning, e.g. to measure a trained model under another CLIP
    cfg.MODEL.CLIP.ALLOW_TEACHER_MISMATCH = False


def add_shared_config(cfg: CN) -> None:
    """MODEL.OVSEG and the INPUT/SOLVER/TEST keys every student reads."""
    # -------------------------------------------------- vocabularies and zero-shot setting
    cfg.MODEL.OVSEG = CN()
    # "none": fully supervised, every class labelled; "inductive": unseen pixels are ignore
    # and the training vocabulary is the seen classes; "transductive": unseen pixels are
    # ignore but the unseen names are known during training (the full vocabulary).
    cfg.MODEL.OVSEG.ZERO_SHOT_SETTING = "none"
    # training vocabulary: "" = derived from the training dataset and the setting above;
    # else a builtin name (ade150, ade847, coco171, voc20, pc59, pc459), a JSON file or
    # a comma-separated list.
    cfg.MODEL.OVSEG.TRAIN_VOCABULARY = ""
    # test vocabulary: "" = each test dataset's stuff_classes (attached per input by the
    # test mapper); same forms as above.
    cfg.MODEL.OVSEG.TEST_VOCABULARY = ""
    # ---- the students' text classifier (ovseg/modeling/text_classifier.py)
    # temperature multiplying cosine(pixel or query embedding, text embedding)
    cfg.MODEL.OVSEG.LOGIT_SCALE = 1 / 0.07
    # learn the temperature (log space, capped at 100) instead of keeping it fixed
    cfg.MODEL.OVSEG.LEARNABLE_LOGIT_SCALE = False
    # replace the text embedding of BACKGROUND_CLASS by a learnable one (MaskCLIP+'s official
    # cls_bg; for datasets that label "background", a class CLIP has no word for)
    cfg.MODEL.OVSEG.BG_EMBED = False
    cfg.MODEL.OVSEG.BACKGROUND_CLASS = "background"
    # ---- the dense head turning backbone features into pixel embeddings, by name in
    # ovseg's DENSE_HEAD_REGISTRY (ovseg/modeling/heads): "DPTDecoder" (LSeg),
    # "DeepLabV2Head", "DeepLabV3PlusHead" or "DepthwiseSeparableASPPHead" (MaskCLIP+)
    cfg.MODEL.DENSE_HEAD = CN()
    cfg.MODEL.DENSE_HEAD.NAME = "DPTDecoder"
    # ---- self-training (ovseg/pseudo/self_training.py): from START_ITER on, the pixels a
    # method pseudo-labels get the student's own predictions; -1 = never
    cfg.MODEL.OVSEG.SELF_TRAINING = CN()
    cfg.MODEL.OVSEG.SELF_TRAINING.START_ITER = -1
    # ---- pseudo-labels (ovseg/pseudo; written by tools/generate_pseudo_labels.py)
    # a pseudo-label store folder whose labels the training mapper attaches to each sample
    # as "pseudo_sem_seg"; "" = none
    cfg.DATASETS.PSEUDO_LABELS = ""

    # ----------------------------------------------------------------------------- input
    # dataset mapper, by name in ovseg's MAPPER_REGISTRY
    cfg.INPUT.DATASET_MAPPER_NAME = "ovseg_semantic"
    # images are fed RGB: CLIP towers expect RGB, and the teacher applies its own mean/std
    cfg.INPUT.FORMAT = "RGB"
    # pad images (and labels with ignore) so both sides are divisible by this; -1 = no pad
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # photometric distortion of SSD (brightness/contrast/saturation/hue) during training
    cfg.INPUT.COLOR_AUG_SSD = False
    # crop at most this fraction of a single category (Mask2Former's rule)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0

    # --------------------------------------------------------------------------- solver
    # "SGD" or "ADAMW"
    cfg.SOLVER.OPTIMIZER = "SGD"
    # learning-rate multiplier for the backbone's parameters (LSeg/ZegCLIP use 0.1)
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    # learning-rate multiplier for parameters whose name matches any of these substrings
    # (e.g. ZegCLIP's "prompt" x10), applied after the backbone multiplier
    cfg.SOLVER.LR_MULTIPLIER_KEYS = []
    cfg.SOLVER.LR_MULTIPLIER = 1.0
    # weight decay of embeddings (positional embeddings, prompt tokens, query embeddings)
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # poly schedule: lr = base * (1 - it / max_iter) ** POWER, used by WarmupPolyLR
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # the poly schedule never goes below this fraction of the base lr
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    # clip the gradients of the whole model (not per parameter) when "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    # AMP autocast dtype when SOLVER.AMP.ENABLED: "fp16" (with a grad scaler) or "bf16"
    cfg.SOLVER.AMP.DTYPE = "fp16"

    # ----------------------------------------------------------------------------- test
    # "whole": one forward on the resized image; "slide": sliding windows
    cfg.TEST.INFERENCE_MODE = "whole"
    # sliding-window (height, width) and stride (height, width), network-input pixels
    cfg.TEST.SLIDE_WINDOW = (512, 512)
    cfg.TEST.SLIDE_STRIDE = (426, 426)
    # windows per forward: 1 holds one window's scores at a time (see docs/performance.md)
    cfg.TEST.SLIDE_WINDOWS_PER_FORWARD = 1
    # save the evaluator's confusion matrix next to its metrics
    cfg.TEST.SAVE_CONFUSION_MATRIX = True


def add_poly_schedule_config(cfg: CN) -> None:
    """SOLVER.POLY_FORMULA / POLY_STEP_ITERS of WarmupPolyLR (ovseg/engine/solver.py)."""
    # "ovseg": max((1 - t)^POWER, ENDING), detectron2's warm-up ramping to the poly value;
    # "mmcv": (1 - ENDING)(1 - t)^POWER + ENDING (min_lr = ENDING x lr), warm-up scaling it
    # (mmcv 1.4.4 mmcv/runner/hooks/lr_updater.py:91-93, :141, :240-241)
    cfg.SOLVER.POLY_FORMULA = "ovseg"
    # t held on multiples of this many iterations (an epoch: lang-seg's LambdaLR, stepped per
    # epoch by Lightning, modules/lsegmentation_module.py:172-174); 0 = every iteration
    cfg.SOLVER.POLY_STEP_ITERS = 0


def add_accumulation_config(cfg: CN) -> None:
    """SOLVER.ACCUMULATE_STEPS (ovseg/engine/train_loop.py, ``Accumulation``)."""
    # one optimizer step over this many loader batches of SOLVER.IMS_PER_BATCH / N images
    # (summed over the GPUs), each loss divided by N: the same images per step, batch norms
    # and memory seeing one N-th of them per forward (PyTorch Lightning's
    # accumulate_grad_batches); 1 = one batch of IMS_PER_BATCH per step
    cfg.SOLVER.ACCUMULATE_STEPS = 1


def add_text_embeddings_file_config(cfg: CN) -> None:
    """MODEL.OVSEG.TEXT_EMBEDDINGS_FILE (ovseg/modeling/text_embeddings_file.py)."""
    # the classes' text embeddings read from this file (.npy or a torch-saved tensor, (K, D),
    # a row per class of the dataset in label order, less a learnt background) instead of
    # computed: the official ZegCLIP .npy / MaskCLIP(+) .pth files (ZegCLIP, MaskCLIP and
    # MaskCLIP+ read it, the others refuse it); "" = computed by the teacher
    cfg.MODEL.OVSEG.TEXT_EMBEDDINGS_FILE = ""


def add_episode_config(cfg: CN) -> None:
    """INPUT.EPISODE: the 2-way (image, class) benchmarks PASCAL-5i / COCO-20i, read by the
    ``ovseg_binary_episode`` mapper (ovseg/data/dataset_mappers/episode.py)."""
    cfg.INPUT.EPISODE = CN()
    # (h, w) every image and mask is resized to, in training and test (LSeg: 480 x 480);
    # (0, 0) keeps the original size
    cfg.INPUT.EPISODE.IMAGE_SIZE = (480, 480)
    # label-255 (boundary) pixels in training: "others" (target 0, LSeg's zero-shot runs) or
    # "ignore" (kept out of the loss); the test follows the dataset's test_ignores_boundary
    cfg.INPUT.EPISODE.TRAIN_BOUNDARY = "others"


def add_test_aug_config(cfg: CN) -> None:
    """TEST.AUG: multi-scale / flip testing of every student (ovseg/modeling/test_time_aug.py)."""
    # on with detectron2's
    # TEST.AUG.ENABLED and mirrored with its TEST.AUG.FLIP (MIN_SIZES/MAX_SIZE are unused):
    # resize factors of TEST.AUG.BASE_SIZE (official LSeg: 0.5-1.75 of 520)
    cfg.TEST.AUG.SCALES = (1.0,)
    # the side length scale 1 gives; 0 = the input's own
    cfg.TEST.AUG.BASE_SIZE = 0
    # the side that gets that length: "long" (official LSeg) or "short"
    cfg.TEST.AUG.RESIZE_SIDE = "long"
    # "logits_sum" (official LSeg), "logits_mean", or "scores_mean" (the declared scores)
    cfg.TEST.AUG.MERGE = "logits_sum"


def add_lseg_config(cfg: CN) -> None:
    """MODEL.LSEG (ovseg/modeling/meta_arch/lseg.py), the DPT decoder (MODEL.DPT,
    heads/dpt.py) and the ViT feature backbones (MODEL.VIT_BACKBONE, backbone/*vit.py).
    LSeg's text is MODEL.CLIP.TEMPLATES (the paper: "name"), its temperature
    MODEL.OVSEG.LOGIT_SCALE."""
    # ---- DPT decoder
    cfg.MODEL.DPT = CN()
    # the four backbone outputs the DPT decoder reads, finest target first
    cfg.MODEL.DPT.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    # DPT reassemble: 1x1 projection widths (DPT ViT-B: 96,192,384,768; ViT-L: 256,512,1024,1024);
    # [] = none: the maps enter the 3x3 convs as they are (official LSeg's ResNet path)
    cfg.MODEL.DPT.REASSEMBLE_CHANNELS = [96, 192, 384, 768]
    # DPT reassemble: target stride of each input (a ViT's maps are resampled to these)
    cfg.MODEL.DPT.REASSEMBLE_STRIDES = [4, 8, 16, 32]
    # width of the DPT fusion path (official "num_features")
    cfg.MODEL.DPT.FEATURES = 256
    # norm of the fusion blocks' residual units: "BN" (official), "GN", "SyncBN" or ""
    cfg.MODEL.DPT.NORM = "BN"
    cfg.MODEL.LSEG = CN()
    # spatial regularisation of the logit map: "none", "depthwise" or "bottleneck"
    cfg.MODEL.LSEG.SPATIAL_REG = "none"
    # passes of the (shared) spatial-regularisation block
    cfg.MODEL.LSEG.SPATIAL_REG_DEPTH = 2
    # activation between passes: "lrelu" (official default), "relu" or "tanh"
    cfg.MODEL.LSEG.SPATIAL_REG_ACTIVATION = "lrelu"
    # the pixel-text products in float16, as the official lseg_net.py:194 (False: float32)
    cfg.MODEL.LSEG.HALF_LOGITS = False
    # the cross-entropy's mean: over every labelled pixel of the batch ("pixels") or each
    # image's own mean, then the mean over the images ("images": one image per GPU officially)
    cfg.MODEL.LSEG.LOSS_NORMALIZATION = "pixels"
    # ViT feature backbones (build_clip_vit_backbone, build_timm_vit_backbone)
    cfg.MODEL.VIT_BACKBONE = CN()
    # 0-based blocks whose tokens become the res2..res5 maps; [] = four evenly spaced
    # ending at the last block (12 blocks: 2,5,8,11; 24 blocks: 5,11,17,23)
    cfg.MODEL.VIT_BACKBONE.OUT_INDICES = []
    # class token into the patch maps: "ignore", "add" or "project" (DPT/LSeg default)
    cfg.MODEL.VIT_BACKBONE.READOUT = "project"
    # keep the ViT's weights fixed (readout projections still train)
    cfg.MODEL.VIT_BACKBONE.FREEZE = False
    # timm model name for build_timm_vit_backbone (the paper: vit_large_patch16_384)
    cfg.MODEL.VIT_BACKBONE.TIMM_MODEL = "vit_large_patch16_384"
    # its weights: "" (random), a local timm checkpoint, "timm" (timm's default tag), a timm
    # tag, or "orig_in21k_ft_in1k" (the paper's ViT-L/16 weights: backbone/timm_vit.py)
    cfg.MODEL.VIT_BACKBONE.TIMM_PRETRAINED = ""
    # folder of downloaded legacy timm weights; "" = torch hub's checkpoints folder
    cfg.MODEL.VIT_BACKBONE.CACHE_DIR = ""
    # positional-embedding resize: "bicubic" (timm) or "bilinear" (official LSeg)
    cfg.MODEL.VIT_BACKBONE.POS_EMBED_INTERP = "bicubic"
    # ---- torchvision ResNet (backbone/torchvision_resnet.py; the paper's zero-shot RN101)
    cfg.MODEL.TORCHVISION_RESNET = CN()
    # a torchvision ResNet builder name
    cfg.MODEL.TORCHVISION_RESNET.ARCH = "resnet101"
    # "" (random), a torchvision weights tag (official: "IMAGENET1K_V1") or a local file
    cfg.MODEL.TORCHVISION_RESNET.WEIGHTS = ""
    # "SyncBN" (official: trained, synchronised), "BN" or "FrozenBN"
    cfg.MODEL.TORCHVISION_RESNET.NORM = "SyncBN"
    # keep the ResNet's weights fixed
    cfg.MODEL.TORCHVISION_RESNET.FREEZE = False


def add_zegclip_config(cfg: CN) -> None:
    """MODEL.ZEGCLIP (ovseg/modeling/meta_arch/zegclip.py, heads/zegclip_decoder.py,
    backbone/clip_vit_prompted.py); text from MODEL.CLIP.TEMPLATES, learnable background
    MODEL.OVSEG.BG_EMBED, self-training from MODEL.OVSEG.SELF_TRAINING.START_ITER."""
    cfg.MODEL.ZEGCLIP = CN()
    # learnable prompt tokens per layer of the frozen CLIP ViT (paper: 10 VOC, 100 COCO)
    cfg.MODEL.ZEGCLIP.NUM_PROMPTS = 10
    # "deep": fresh prompts before every block (VPT-deep, paper); "shallow": input only
    cfg.MODEL.ZEGCLIP.PROMPT_DEPTH = "deep"
    # pass prompts through a learnable linear layer + dropout before use (official code)
    cfg.MODEL.ZEGCLIP.PROMPT_PROJ = True
    # dropout on the projected prompts (official: 0.1)
    cfg.MODEL.ZEGCLIP.PROMPT_DROPOUT = 0.1
    # stride of the frozen patch embedding in pixels; 0 keeps the patch size (paper). A
    # smaller stride (a divisor of the patch size, same parity) gives overlapping patches
    # and a finer token grid, H/stride x W/stride, from the same weights; each token still
    # sees a patch-sized window, as in pretraining. Costs (patch/stride)^2 more tokens.
    cfg.MODEL.ZEGCLIP.PATCH_STRIDE = 0
    # add the class embedding to the class token twice, as the token and into its positional
    # embedding (class token 2 cls + pos0): an official quirk its checkpoints were made with
    cfg.MODEL.ZEGCLIP.DOUBLE_CLASS_EMBEDDING = False
    # resize of the tower's positional embeddings to the patch grid: "bicubic" or "bilinear"
    # (official)
    cfg.MODEL.ZEGCLIP.POS_EMBED_INTERPOLATION = "bicubic"
    # initial bias of the prompt projection: "zeros" or "uniform" (official: nn.Linear's own)
    cfg.MODEL.ZEGCLIP.PROMPT_PROJ_BIAS_INIT = "zeros"
    # input normalisation of the prompted tower: "clip" (the CLIP model's mean/std) or
    # "imagenet" (mmseg's ImageNet mean/std, as the official data pipeline)
    cfg.MODEL.ZEGCLIP.PIXEL_STATISTICS = "clip"
    # decoder layers in which class queries attend to the patch tokens (paper: 3)
    cfg.MODEL.ZEGCLIP.DECODER_LAYERS = 3
    # attention heads of the decoder; the mask logits are their average (official: 8)
    cfg.MODEL.ZEGCLIP.DECODER_HEADS = 8
    # dropout in the decoder's attention and FFN (official: 0.1)
    cfg.MODEL.ZEGCLIP.DECODER_DROPOUT = 0.1
    # self-attention among class queries in each decoder layer (official code: none)
    cfg.MODEL.ZEGCLIP.DECODER_SELF_ATTENTION = False
    # decoder initialisation: "official" (what the official run trains from: PyTorch's
    # defaults, every layer a copy of the first), "trunc_normal" (the official head's
    # init_weights, which its train.py never calls: std 0.02, zero biases) or "clip" (the class
    # query is the text embedding and every layer's query/key projections are the identity,
    # so the first masks are CLIP's patch-text similarity; not in the paper)
    cfg.MODEL.ZEGCLIP.DECODER_INIT = "trunc_normal"
    # weight of the sigmoid focal loss over the vocabulary's classes (paper: 100)
    cfg.MODEL.ZEGCLIP.FOCAL_WEIGHT = 100.0
    # focal loss alpha: the weight of positives (1 - alpha for negatives); negative: no
    # weighting (ovseg/modeling/losses.py)
    cfg.MODEL.ZEGCLIP.FOCAL_ALPHA = 0.25
    # focal loss gamma: the exponent of the down-weighting of easy pixels
    cfg.MODEL.ZEGCLIP.FOCAL_GAMMA = 2.0
    # weight of the dice loss on the classes present in each image (paper: 1)
    cfg.MODEL.ZEGCLIP.DICE_WEIGHT = 1.0
    # apply the losses to every decoder layer's masks (ovseg), not only the last one's
    # (official: its deep-supervision loop never runs)
    cfg.MODEL.ZEGCLIP.DEEP_SUPERVISION = True
    # ignored pixels count as negatives of every class (official code) instead of being
    # left out of the losses
    cfg.MODEL.ZEGCLIP.IGNORE_AS_NEGATIVE = False
    # inductive calibration: subtracted at test from the sigmoid scores of classes seen in
    # training (paper: 0.1); not applied to a self-trained model
    cfg.MODEL.ZEGCLIP.CALIBRATION = 0.1
    # self-training (from MODEL.OVSEG.SELF_TRAINING.START_ITER on): which pixels are labelled
    # with the argmax over the unseen classes of the model's prediction: "ignore" (every
    # ignored pixel; ZERO_SHOT_SETTING "transductive") or "unseen" (the unseen classes'
    # pixels, official protocol; the labels come with ZERO_SHOT_SETTING "none" and only
    # locate them). Before START_ITER the unseen classes get no loss.
    cfg.MODEL.ZEGCLIP.SELF_TRAINING_PIXELS = "ignore"


def add_speed_config(cfg: CN) -> None:
    """Speed switches that leave the method unchanged (ovseg/engine/speed.py)."""
    # write the loss metrics every N steps in one device read-back instead of every step
    # (detectron2 syncs host and device each step); 1 = detectron2's per-step read-back
    cfg.SOLVER.METRICS_PERIOD = 20
    # AdamW/SGD's fused CUDA kernel (one launch for every parameter) when the model is on CUDA
    cfg.SOLVER.FUSED_OPTIMIZER = True
    # torch.compile the model's network modules (and its loss function where it has one)
    cfg.MODEL.COMPILE = False
    # torch.compile mode: "default", "reduce-overhead" or "max-autotune"
    cfg.MODEL.COMPILE_MODE = "default"
    # torch.compile the student's loss function alone (ZegCLIP's focal and dice losses, LSeg's
    # normalised embeddings' logits and cross-entropy: fused kernels instead of full-size
    # element-wise passes) when MODEL.COMPILE is off: "auto" (on CUDA, where triton is importable),
    # "always" (the CPU too: inductor's C++ kernels, which need a compiler), "never"
    cfg.MODEL.COMPILE_LOSS = "auto"
    # channels-last (NHWC) weights and inputs, for the convolutional students under autocast
    cfg.MODEL.CHANNELS_LAST = False


# keys that moved: an old config naming one fails with the new name instead of a bare
# "non-existent key"
RENAMED_KEYS = {
    "MODEL.MASKCLIP.LOGIT_SCALE": "MODEL.CLIP.LOGIT_SCALE",
    "MODEL.LSEG.TEMPLATES": "MODEL.CLIP.TEMPLATES",
    "MODEL.LSEG.LOGIT_SCALE": "MODEL.OVSEG.LOGIT_SCALE",
    "MODEL.LSEG.LEARNABLE_LOGIT_SCALE": "MODEL.OVSEG.LEARNABLE_LOGIT_SCALE",
    "MODEL.MASKCLIP_PLUS.LOGIT_SCALE": "MODEL.OVSEG.LOGIT_SCALE",
    "MODEL.MASKCLIP_PLUS.BG_EMBED": "MODEL.OVSEG.BG_EMBED",
    "MODEL.MASKCLIP_PLUS.BACKGROUND_CLASS": "MODEL.OVSEG.BACKGROUND_CLASS",
    "MODEL.MASKCLIP_PLUS.SELF_TRAIN_START": "MODEL.OVSEG.SELF_TRAINING.START_ITER",
    "MODEL.MASKCLIP_PLUS.SELF_TRAIN_THRESHOLD": "MODEL.MASKCLIP_PLUS.SELF_TRAINING_THRESHOLD",
    "MODEL.ZEGCLIP.BG_EMBED": "MODEL.OVSEG.BG_EMBED",
    "MODEL.ZEGCLIP.BACKGROUND_CLASS": "MODEL.OVSEG.BACKGROUND_CLASS",
    "MODEL.ZEGCLIP.TRANSDUCTIVE": "MODEL.OVSEG.SELF_TRAINING.START_ITER",
    "MODEL.ZEGCLIP.TRANSDUCTIVE_START_ITER": "MODEL.OVSEG.SELF_TRAINING.START_ITER",
    "MODEL.ZEGCLIP.TRANSDUCTIVE_PIXELS": "MODEL.ZEGCLIP.SELF_TRAINING_PIXELS",
    # Mask2Former's switches: FreeSeg's evaluated tasks are MODEL.FREESEG.TEST_TASKS (a list)
    **{
        f"MODEL.MASK_FORMER.TEST.{task.upper()}_ON": "MODEL.FREESEG.TEST_TASKS"
        for task in ("semantic", "instance", "panoptic")
    },
    **{
        f"MODEL.LSEG.{k}": f"MODEL.DPT.{k}"
        for k in ("IN_FEATURES", "REASSEMBLE_CHANNELS", "REASSEMBLE_STRIDES", "FEATURES", "NORM")
    },
}
