"""A binary dataset's 1-bit (mode "1") label PNGs read as classes 0 and 1."""

import numpy as np
from PIL import Image

from ovseg.data.dataset_mappers.semantic import SemanticDatasetMapper, zero_shot_label_map
from ovseg.data.image_io import read_label


def test_a_one_bit_label_png_reads_as_classes_0_and_1(tmp_path):
    """A binary dataset's mode-"1" labels read as bool, which the label remap indexed as a
    mask (IndexError naming no file); they are classes 0 and 1 in every path."""
    bits = np.zeros((16, 16), bool)
    bits[:, 8:] = True
    Image.fromarray(bits).convert("1").save(tmp_path / "l.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "i.png")
    label = read_label(tmp_path / "l.png")
    assert label.dtype == np.uint8 and label.tolist() == bits.astype(np.uint8).tolist()
    table, vocab = zero_shot_label_map(["background", "road", "car"], unseen=["car"],
                                       setting="inductive")  # fmt: skip
    mapper = SemanticDatasetMapper(
        is_train=True, augmentations=[], image_format="RGB", ignore_label=255,
        size_divisibility=-1, vocabulary=vocab, label_map=table, num_classes=3,
    )  # fmt: skip
    out = mapper(
        {"file_name": str(tmp_path / "i.png"), "sem_seg_file_name": str(tmp_path / "l.png")}
    )
    assert out["sem_seg"].tolist() == bits.astype(np.int64).tolist()
