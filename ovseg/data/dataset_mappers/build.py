"""The dataset-mapper registry and its builder."""

from __future__ import annotations

from typing import Any, Callable, Optional

from detectron2.utils.registry import Registry

from ...pseudo import expected_pseudo_labels
from .teacher_input import TeacherInputMapper

__all__ = ["MAPPER_REGISTRY", "build_dataset_mapper"]


class _NamedRegistry(Registry):
    """detectron2's Registry whose ``register`` can also take the name to register under.

    Mapper names are config values ("ovseg_semantic"), not class names.
    """

    def register(self, obj: Any = None, *, name: Optional[str] = None) -> Any:
        if name is None:
            return super().register(obj)

        def deco(cls: Any) -> Any:
            self._do_register(name, cls)
            return cls

        return deco if obj is None else deco(obj)


MAPPER_REGISTRY = _NamedRegistry("OVSEG_MAPPER")
MAPPER_REGISTRY.__doc__ = """
Registry for dataset mappers: callables turning a dataset dict into a model input dict.

Register with ``@MAPPER_REGISTRY.register(name="...")``. A registered class is built as
``cls(cfg, is_train=..., dataset_name=...)``, so it should be ``@configurable`` with
``from_config(cls, cfg, is_train=True, dataset_name=None)``.
"""


def build_dataset_mapper(
    cfg, is_train: bool, dataset_name: Optional[str] = None
) -> Callable[[dict], dict]:
    """Build the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``.

    A training mapper of a student whose teacher labels the original images in the loop
    (pseudo-label source "online", :func:`ovseg.pseudo.expected_pseudo_labels`) is wrapped
    in :class:`~ovseg.data.dataset_mappers.teacher_input.TeacherInputMapper`: its samples
    also carry the test-mode mapping of their original image, as a store's generator makes it.

    Args:
        cfg (CfgNode): the full config.
        is_train (bool): training (augmentations, zero-shot remap) or test mapping.
        dataset_name (str, optional): the dataset the mapper serves; default: the first of
            ``cfg.DATASETS.TRAIN`` (training) or ``cfg.DATASETS.TEST`` (test).

    Returns:
        callable: dataset dict -> model input dict.
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in MAPPER_REGISTRY:
        registered = sorted(key for key, _ in MAPPER_REGISTRY)
        raise KeyError(
            f"No dataset mapper named {name!r} (cfg.INPUT.DATASET_MAPPER_NAME); registered "
            f"mappers are {registered}"
        )
    mapper_cls: Any = MAPPER_REGISTRY.get(name)
    mapper = mapper_cls(cfg, is_train=is_train, dataset_name=dataset_name)
    spec = expected_pseudo_labels(cfg) if is_train else None
    if spec is not None and spec.source == "online":
        train_name = dataset_name or cfg.DATASETS.TRAIN[0]
        mapper = TeacherInputMapper(mapper, build_dataset_mapper(cfg, False, train_name))
    return mapper
