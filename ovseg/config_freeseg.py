"""Config keys of the FreeSeg student (ovseg/modeling/freeseg, meta_arch/freeseg*.py);
defaults reproduce bytedance/FreeSeg @7707335."""

from detectron2.config import CfgNode as CN


def add_freeseg_config(cfg: CN) -> None:
    """MODEL.FREESEG: FreeSeg's prompts, interaction head and CLIP ensemble
    (ovseg/modeling/freeseg/, meta_arch/freeseg_prompt.py)."""
    cfg.MODEL.FREESEG = CN()
    # task texts of the adaptive prompts; a training batch draws one (official INPUT.TASK_NAME)
    cfg.MODEL.FREESEG.TASK_NAMES = [
        "semantic segmentation.",
        "instance segmentation.",
        "panoptic segmentation.",
    ]
    # learnable class-context tokens before the class name (official PROMPT_SHAPE (16, 0))
    cfg.MODEL.FREESEG.NUM_CLASS_PROMPT_TOKENS = 16
    # learnable task tokens after the task text (official TASK_PROMPT_SHAPE 8)
    cfg.MODEL.FREESEG.NUM_TASK_PROMPT_TOKENS = 8
    # cache frozen-prompt text features per (task, noun); False = per noun (official defect:
    # the first task to ask for a noun fixes its features for every task)
    cfg.MODEL.FREESEG.PROMPT_CACHE_BY_TASK = True
    # the prompt stage's checkpoint whose learnt tokens the main stage loads and freezes
    cfg.MODEL.FREESEG.PROMPT_CHECKPOINT = ""
    # scale of the cosine logits against the text features (official 100)
    cfg.MODEL.FREESEG.TEMPERATURE = 100.0
    # scale of CLIP's cosine logits for the test-time mask crops (official 100, adapter.py:69:
    # real CLIP's own learned scale); 0 = the loaded CLIP's own exp(logit_scale)
    cfg.MODEL.FREESEG.CLIP_TEMPERATURE = 100.0
    # a mask pixel is inside where its probability is above this (official MASK_THR 0.5)
    cfg.MODEL.FREESEG.MASK_THRESHOLD = 0.5
    # a mask crop's box is scaled by this about its centre, the added pixels filled like the
    # rest outside the mask: the test-time ensemble's crops and the prompt stage's mapper
    # (ovseg_region), as the one official MODEL.CLIP_ADAPTER.MASK_EXPAND_RATIO (1.0,
    # config.py:146)
    cfg.MODEL.FREESEG.MASK_EXPAND_RATIO = 1.0
    # lambda of the test-time CLIP ensemble, in (0, 1] (official 0.8; VOC 0.7/0.8, cross 0.4)
    cfg.MODEL.FREESEG.ENSEMBLE_WEIGHT = 0.8
    # upsample the test mask logits with corners aligned, as the release tests
    # (open_vocabulary_model.py:265) although its loss upsamples them unaligned
    # (criterion.py:150-154); False = as in training (official quirk: True)
    cfg.MODEL.FREESEG.TEST_ALIGN_CORNERS = True
    # ensemble the query classes with CLIP's classes of each mask crop at test (official True)
    cfg.MODEL.FREESEG.CLIP_ENSEMBLE = True
    # tasks a training batch draws from ("semantic", "instance", "panoptic"); empty = those
    # INPUT.DATASET_MAPPER_NAME's targets support (ovseg_panoptic: all three)
    cfg.MODEL.FREESEG.TRAIN_TASKS = []
    # the semantic task's masks (main stage targets, prompt stage regions): "segments", each
    # class's panoptic segments united, or "sem_seg", the training set's semantic label map
    # (the release's all-task data: coco_full_task_new_baseline_dataset_mapper.py:236-288,
    # register_coco_full.py:236-246, ade_all_task_dataset_mapper.py)
    cfg.MODEL.FREESEG.SEMANTIC_TARGETS = "segments"
    # tasks evaluated at test, each with its own prompts; empty = what each test set's
    # evaluator reads (panoptic set: all three; instance set: instance; else semantic)
    cfg.MODEL.FREESEG.TEST_TASKS = []
    _add_prompt_stage_config(cfg)
    cfg.MODEL.FREESEG.TEST_PROMPT_TUNING = CN()
    # per test image, tune the class-context tokens by entropy minimisation of the unseen
    # classes (paper; not in the release), restored after the image
    cfg.MODEL.FREESEG.TEST_PROMPT_TUNING.ENABLED = False
    # AdamW steps per image
    cfg.MODEL.FREESEG.TEST_PROMPT_TUNING.STEPS = 1
    # their learning rate (official TEST.OPTIM.LR 0.001, declared and never read)
    cfg.MODEL.FREESEG.TEST_PROMPT_TUNING.LR = 0.001
    # share of queries (lowest unseen-class entropy first) in the loss
    cfg.MODEL.FREESEG.TEST_PROMPT_TUNING.SELECT_FRACTION = 0.1
    cfg.MODEL.FREESEG.INTERACTION = CN()
    # attention width of the text/visual interaction (official EMBED_DIM 2048)
    cfg.MODEL.FREESEG.INTERACTION.EMBED_DIM = 2048
    # attention heads of the interaction (official NUM_HEADS 8)
    cfg.MODEL.FREESEG.INTERACTION.NUM_HEADS = 8
    # dropout on the interaction's attention probabilities (official 0.1)
    cfg.MODEL.FREESEG.INTERACTION.DROPOUT = 0.1
    # initial layer-scale gamma of the interaction update (official 0.1)
    cfg.MODEL.FREESEG.INTERACTION.LAYER_SCALE_INIT = 0.1
    # map i's text keys get the key LayerNorm i + 1 times, as the official loop (True)
    cfg.MODEL.FREESEG.INTERACTION.STACKED_KEY_NORM = True


def _add_prompt_stage_config(cfg: CN) -> None:
    """MODEL.FREESEG.PROMPT_*: the prompt-learning stage's data (meta_arch/freeseg_prompt.py,
    ovseg/data/region_sampling.py, the ovseg_region mapper)."""
    # prompt stage: at most N region records per class and task (official DATASETS.
    # SAMPLE_PER_CLASS: COCO 64, VOC 128, ADE 32); -1 = every region record
    cfg.MODEL.FREESEG.PROMPT_SAMPLES_PER_CLASS = -1
    # seed of that draw (official DATASETS.SAMPLE_SEED 0)
    cfg.MODEL.FREESEG.PROMPT_SAMPLE_SEED = 0
    # draw with replacement (official defect: repeated records; False = N distinct ones)
    cfg.MODEL.FREESEG.PROMPT_SAMPLE_REPLACE = False
    # training crop: random resized crop to (H, W) (official INPUT.MIN_SIZE_TRAIN (224, 244),
    # which augmentations.py:148-150 reads as width 224, height 244)
    cfg.MODEL.FREESEG.PROMPT_TRAIN_SIZE = (244, 224)
    # test crop: the centre S x S of the box crop, padded, not resized (official
    # INPUT.MIN_SIZE_TEST 224 through CenterCrop)
    cfg.MODEL.FREESEG.PROMPT_TEST_SIZE = 224
    # embed each crop at its own size, CLIP's positional embeddings interpolated (bicubic,
    # corners aligned) to its grid, as the release (third_party/CLIP/clip/model.py:343-360,
    # ovseg/clip/native_size.py); False = resize every crop to CLIP's input size
    cfg.MODEL.FREESEG.PROMPT_NATIVE_SIZE = True
    # fill outside the region with CLIP's mean in normalised space, raw 255 * (mean + std *
    # mean) (official defect, proposal_classification.py:113-116); False = the mean colour,
    # as the test-time ensemble's crops
    cfg.MODEL.FREESEG.PROMPT_FILL_NORMALIZED_MEAN = False
    # prompt stage: score every region of a batch with its first input's task prompt
    # (official defect); False = each region with its own task's prompt
    cfg.MODEL.FREESEG.PROMPT_ONE_TASK_PER_BATCH = False
