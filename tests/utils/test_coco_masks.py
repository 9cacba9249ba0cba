"""ovseg.utils.coco_masks: every COCO segmentation form decodes to the same hand-drawn mask."""

import numpy as np
import pytest
from pycocotools import mask as mask_util

from ovseg.utils.coco_masks import decode_segmentation

H, W = 6, 8


def _expected():
    m = np.zeros((H, W), bool)
    m[1:4, 2:6] = True  # rows 1-3, columns 2-5
    return m


def _compressed():
    return mask_util.encode(np.asfortranarray(_expected().astype(np.uint8)))


def _uncompressed():
    # column-major run lengths, starting with a run of zeros
    flat = _expected().flatten(order="F").astype(int)
    runs, value, n = [], 0, 0
    for v in flat:
        if v == value:
            n += 1
        else:
            runs.append(n)
            value, n = v, 1
    runs.append(n)
    return {"size": [H, W], "counts": runs}


@pytest.mark.parametrize(
    "segmentation",
    [
        # two polygons that merge into the rectangle (pixel centres inside the outline)
        [[2, 1, 4, 1, 4, 4, 2, 4], [4, 1, 6, 1, 6, 4, 4, 4]],
        _compressed(),  # counts as bytes
        {"size": [H, W], "counts": _compressed()["counts"].decode("ascii")},  # as in json
        _uncompressed(),
    ],
    ids=["polygons", "rle-bytes", "rle-str", "rle-list"],
)
def test_every_form_decodes_to_the_drawn_mask(segmentation):
    got = decode_segmentation(segmentation, H, W)
    assert got.dtype == bool and got.shape == (H, W)
    np.testing.assert_array_equal(got, _expected())


def test_another_type_is_refused_with_what_to_check():
    with pytest.raises(ValueError, match="list of polygons or an RLE dict, not str"):
        decode_segmentation("1 2 3", H, W)


def test_polygons_of_fewer_than_three_points_are_dropped_as_detectron2_drops_them():
    polygons = [[2, 1, 4, 1, 4, 4, 2, 4], [4, 1, 6, 1, 6, 4, 4, 4]]
    np.testing.assert_array_equal(decode_segmentation(polygons + [[0, 0, 1, 1]], H, W), _expected())
    for nothing in ([], [[0, 0, 1, 1]], [[]]):  # no polygon left: an empty mask, no target
        assert not decode_segmentation(nothing, H, W).any()


def test_a_malformed_polygon_is_named_with_its_image():
    with pytest.raises(ValueError, match=r"a\.jpg: a polygon segmentation is a list of flat"):
        decode_segmentation([[2, 1, 4, 1, 4]], H, W, "a.jpg")
    with pytest.raises(ValueError, match=r"a\.jpg: a polygon segmentation"):
        decode_segmentation([2, 1, 4, 1, 4, 4], H, W, "a.jpg")  # one flat list, not nested
