"""Open-vocabulary evaluation (semantic, instance, panoptic, regions): metrics, evaluators."""

from .build import build_evaluator, register_evaluator
from .fewshot_evaluator import FewShotEpisodeEvaluator, fewshot_metrics, mean_over_folds
from .instance_evaluator import OpenVocabInstanceEvaluator, split_average_precision
from .metrics import harmonic_iou, segmentation_metrics
from .panoptic_evaluator import OpenVocabPanopticEvaluator
from .panoptic_quality import pq_compute
from .region_classification import RegionClassificationEvaluator, region_accuracies
from .sem_seg_evaluator import OpenVocabSemSegEvaluator

__all__ = [
    "FewShotEpisodeEvaluator",
    "fewshot_metrics",
    "mean_over_folds",
    "OpenVocabInstanceEvaluator",
    "OpenVocabPanopticEvaluator",
    "OpenVocabSemSegEvaluator",
    "pq_compute",
    "RegionClassificationEvaluator",
    "region_accuracies",
    "split_average_precision",
    "build_evaluator",
    "harmonic_iou",
    "register_evaluator",
    "segmentation_metrics",
]
