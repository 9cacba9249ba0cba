"""Build the evaluator a dataset asks for through its ``evaluator_type`` metadata."""

from __future__ import annotations

import os
from collections.abc import Callable

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators

from .fewshot_evaluator import FewShotEpisodeEvaluator
from .instance_evaluator import OpenVocabInstanceEvaluator
from .panoptic_evaluator import OpenVocabPanopticEvaluator
from .region_classification import RegionClassificationEvaluator
from .sem_seg_evaluator import OpenVocabSemSegEvaluator

__all__ = ["EVALUATOR_FACTORIES", "build_evaluator", "output_folder_for", "register_evaluator"]

# evaluator_type -> factory(cfg, dataset_name, output_folder) -> DatasetEvaluator
EVALUATOR_FACTORIES: dict[str, Callable[[CfgNode, str, str], DatasetEvaluator]] = {}


def register_evaluator(*evaluator_types: str):
    """Decorator: make a factory ``f(cfg, dataset_name, output_folder)`` build the evaluator
    of every dataset whose metadata ``evaluator_type`` is one of ``evaluator_types``."""

    def deco(factory):
        for name in evaluator_types:
            if name in EVALUATOR_FACTORIES:
                raise ValueError(f"An evaluator factory for {name!r} is already registered.")
            EVALUATOR_FACTORIES[name] = factory
        return factory

    return deco


@register_evaluator("ovseg_sem_seg", "sem_seg")
def _build_sem_seg(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    # detectron2's plain "sem_seg" datasets get ours too: same metrics plus the saved matrix
    return OpenVocabSemSegEvaluator(
        dataset_name,
        distributed=True,
        output_dir=output_folder,
        save_confusion_matrix=cfg.TEST.get("SAVE_CONFUSION_MATRIX", True),
    )


@register_evaluator("fewshot_binary")
def _build_fewshot(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    # PASCAL-5i / COCO-20i episodes: HSNet's per-fold mIoU and FB-IoU
    return FewShotEpisodeEvaluator(dataset_name, distributed=True, output_dir=output_folder)


@register_evaluator("ovseg_region_classification")
def _build_regions(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    # FreeSeg's prompt stage on "<split>_regions": top-1/top-5 and mean class accuracy
    return RegionClassificationEvaluator(dataset_name, distributed=True)


@register_evaluator("ovseg_instance")
def _build_instance(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    return OpenVocabInstanceEvaluator(dataset_name, output_dir=output_folder)


@register_evaluator("ovseg_panoptic")
def _build_panoptic(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    # PQ; mIoU and mask AP where the dataset has semantic labels / an instance json (each
    # evaluator skips outputs without its key, as Mask2Former evaluates one model three ways)
    meta = MetadataCatalog.get(dataset_name)
    evaluators: list[DatasetEvaluator] = []
    if meta.get("sem_seg_root", None):
        evaluators.append(_build_sem_seg(cfg, dataset_name, output_folder))
    evaluators.append(OpenVocabPanopticEvaluator(dataset_name, output_dir=output_folder))
    if meta.get("json_file", None):
        evaluators.append(OpenVocabInstanceEvaluator(dataset_name, output_dir=output_folder))
    return DatasetEvaluators(evaluators)


def output_folder_for(cfg: CfgNode, dataset_name: str, root: str | None = None) -> str:
    """Where ``dataset_name``'s evaluator writes: ``root`` (``<OUTPUT_DIR>/inference`` when
    None), or ``<root>/<dataset_name>`` when DATASETS.TEST names several sets (each set's
    files would overwrite the one before)."""
    root = os.path.join(cfg.OUTPUT_DIR, "inference") if root is None else root
    return os.path.join(root, dataset_name) if len(set(cfg.DATASETS.TEST)) > 1 else root


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> DatasetEvaluator:
    """Build the evaluator for a registered dataset from its ``evaluator_type``.

    Args:
        cfg (CfgNode): the full config (``TEST.SAVE_CONFUSION_MATRIX`` is read).
        dataset_name (str): a registered dataset name.
        output_folder (str or None): where the evaluator writes its files; defaults to
            ``<OUTPUT_DIR>/inference``, as detectron2's trainers do, and to
            ``<OUTPUT_DIR>/inference/<dataset_name>`` when DATASETS.TEST names several sets
            (each set's files would overwrite the one before).

    Returns:
        DatasetEvaluator: the evaluator for this dataset.
    """
    if output_folder is None:
        output_folder = output_folder_for(cfg, dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_FACTORIES:
        raise ValueError(
            f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}, which ovseg "
            f"cannot evaluate; supported evaluator types: {sorted(EVALUATOR_FACTORIES)}."
        )
    return EVALUATOR_FACTORIES[evaluator_type](cfg, dataset_name, output_folder)
