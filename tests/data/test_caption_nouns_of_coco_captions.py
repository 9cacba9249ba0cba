"""Caption nouns of captions read the way training reads them: a COCO ``captions_*.json``
attached to an instance split by its loader."""

import pytest
from ovseg_testing.xpm import XPM_TRAIN, registered_captioned_coco

from detectron2.data import DatasetCatalog

from ovseg.data.captions import CaptionNounMatcher


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    with registered_captioned_coco(tmp_path_factory.mktemp("datasets")):
        yield DatasetCatalog.get(XPM_TRAIN)


def test_nouns_of_every_caption_of_an_image(dicts):
    m = CaptionNounMatcher.coco65()
    one, two = (m(d["captions"]) for d in dicts)
    name = m.class_names.__getitem__
    # plurals ("dogs"), "people"/"woman"/"man" for person, "television" and "TV" for tv
    assert [(p, name(c)) for p, c in one.nouns] == [
        ("man", "person"), ("dog", "dog"), ("television", "tv"), ("woman", "person"),
        ("tv", "tv"), ("people", "person"),
    ]  # fmt: skip
    # "tv set" (an LVIS synonym) and "tv" are two phrases of one class: both kept, as XPM
    assert [(p, name(c)) for p, c in two.nouns] == [
        ("person", "person"), ("tv", "tv"), ("tv set", "tv"), ("television", "tv"),
    ]  # fmt: skip
    official = CaptionNounMatcher.coco65(extras=False)
    assert [p for p, _ in official(dicts[0]["captions"]).nouns] == ["man", "dog", "woman", "tv"]
