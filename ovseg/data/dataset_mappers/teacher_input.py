"""Training samples that carry their original image as a teacher sees it.

For teacher labels computed in the training loop exactly as a pseudo-label store holds
them (the ``"online"`` pseudo-label source): :func:`ovseg.data.build_dataset_mapper` wraps
the training mapper in :class:`TeacherInputMapper` when the config's student asks for it
(:func:`ovseg.pseudo.expected_pseudo_labels`), so the model runs its teacher on tensors it
is given and reads no file.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["TeacherInputMapper"]

# label files of a dataset dict: the teacher's view of an image needs none of them
_LABEL_FILES = ("sem_seg_file_name", "pseudo_sem_seg_file_name")
# what a teacher meta-architecture reads of a test-mode model input
_TEACHER_KEYS = ("file_name", "image", "height", "width")


class TeacherInputMapper:
    """A training mapper whose samples also carry ``"teacher_input"``.

    ``"teacher_input"`` is the test-mode mapping of the sample's original image, as
    ``tools/generate_pseudo_labels.py`` gives it to the teacher: a dict with "image" (uint8
    (3, H', W')), "height" and "width" (the original size) and "file_name". The sample's
    "transforms" move labels of the original image onto it
    (:func:`~ovseg.data.dataset_mappers.semantic.transform_label`).

    Args:
        mapper: the training mapper; its samples must carry "transforms".
        test_mapper: the test-mode mapper a pseudo-label store is generated with.
    """

    def __init__(self, mapper: Callable[[dict], dict], test_mapper: Callable[[dict], dict]):
        self.mapper = mapper
        self.test_mapper = test_mapper

    def __call__(self, dataset_dict: dict) -> dict:
        sample = self.mapper(dataset_dict)
        if "transforms" not in sample:
            raise ValueError(
                f"The training mapper {type(self.mapper).__name__} gives sample "
                f"{dataset_dict.get('file_name', '')!r} no 'transforms' (the TransformList it "
                "applied), so a teacher's labels of the original image cannot be moved onto "
                "it; use ovseg's mappers (INPUT.DATASET_MAPPER_NAME 'ovseg_semantic')"
            )
        original = {k: v for k, v in dataset_dict.items() if k not in _LABEL_FILES}
        teacher = self.test_mapper(original)
        sample["teacher_input"] = {k: teacher[k] for k in _TEACHER_KEYS}
        return sample

    def __repr__(self) -> str:
        return f"TeacherInputMapper({self.mapper!r}, test_mapper={self.test_mapper!r})"
