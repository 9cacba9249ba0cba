"""FreeSeg's own modules: adaptive prompts, the text/visual interaction head, the cosine
class head with a learned no-object embedding, and the test-time CLIP ensemble."""

from .ensemble import check_expand_ratio, clip_region_probs, ensemble_probs, mask_crops, query_probs
from .heads import TextAttention, TextClassHead, TextVisualInteraction
from .prompt import DEFAULT_TASK_NAMES, AdaptivePromptLearner, load_prompt_tokens

__all__ = [
    "AdaptivePromptLearner",
    "DEFAULT_TASK_NAMES",
    "TextAttention",
    "TextClassHead",
    "TextVisualInteraction",
    "check_expand_ratio",
    "clip_region_probs",
    "ensemble_probs",
    "load_prompt_tokens",
    "mask_crops",
    "query_probs",
]
