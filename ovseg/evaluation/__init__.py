"""Open-vocabulary semantic-segmentation evaluation: metrics, evaluator, and its factory."""

from .build import build_evaluator, register_evaluator
from .fewshot_evaluator import FewShotEpisodeEvaluator, fewshot_metrics, mean_over_folds
from .metrics import harmonic_iou, segmentation_metrics
from .sem_seg_evaluator import OpenVocabSemSegEvaluator

__all__ = [
    "FewShotEpisodeEvaluator",
    "fewshot_metrics",
    "mean_over_folds",
    "OpenVocabSemSegEvaluator",
    "build_evaluator",
    "harmonic_iou",
    "register_evaluator",
    "segmentation_metrics",
]
