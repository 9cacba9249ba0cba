"""XPM's own caption vocabulary: the 1203 LVIS categories with their synonyms, matched by the
parser's rule (ovseg/data/captions/lvis.py, CaptionNounMatcher.lvis)."""

import pytest

from ovseg.data.captions import CaptionNounMatcher
from ovseg.data.captions.lvis import (
    LVIS_BACKGROUND_NAME,
    check_caption_vocabulary,
    lvis_synonyms,
    lvis_vocabulary,
)
from ovseg.data.datasets.toy_world import generate_sample


@pytest.fixture(scope="module")
def lvis():
    return CaptionNounMatcher.lvis()


def _found(matcher, caption):
    return {phrase: matcher.class_names[c] for phrase, c in matcher.match_caption(caption)}


def test_lvis_vocabulary_is_the_official_normalised_list():
    names = lvis_vocabulary()
    assert len(names) == 1203 and len(set(names)) == 1203
    assert names[0] == LVIS_BACKGROUND_NAME == "aerosol can"  # official id 0, the background
    assert names[:3] == ("aerosol can", "air conditioner", "airplane")
    assert "car automobile" in names and "bow decorative ribbons" in names  # _ ( ) gone
    assert not any("," in n or "  " in n or n != n.strip() for n in names)  # one name each
    want = ("car_(automobile)", "auto_(automobile)", "automobile")
    assert lvis_synonyms()["car automobile"] == want
    assert check_caption_vocabulary("lvis") == "lvis"
    with pytest.raises(ValueError, match="CAPTION_VOCABULARY='coco' is not one of"):
        check_caption_vocabulary("coco")


@pytest.mark.parametrize(
    "caption, expected",
    [
        # an LVIS-only noun: not one of COCO's 65 names
        ("A man sitting at a wooden table.", {"man": "person", "table": "table"}),
        ("A street sign by a lamppost.", {"street sign": "street sign", "lamppost": "lamppost"}),
        # synonyms and plurals (irregular too)
        ("Two automobiles parked by the curb.", {"automobile": "car automobile"}),
        ("Three women holding spray cans.", {"woman": "person", "spray can": "aerosol can",
                                            "spray": "atomizer", "can": "can"}),
        ("Knives on the cutting boards.", {"knife": "knife", "cutting board": "chopping board"}),
        # a phrase of two categories names the later one, as the parser's table
        ("A girl wearing glasses.", {"girl": "person", "glass": "spectacles"}),
        # whole words only
        ("A dog trying to catch a frisbee.", {"dog": "dog", "frisbee": "frisbee"}),
    ],
)  # fmt: skip
def test_lvis_nouns_of_hand_written_captions(lvis, caption, expected):
    assert _found(lvis, caption) == expected


def test_lvis_only_nouns_are_unknown_to_the_coco_matcher(lvis):
    coco = CaptionNounMatcher.coco65()
    caption = "A man sitting at a wooden table with a lamppost outside."
    assert {coco.class_names[c] for _, c in coco.match_caption(caption)} == {"person"}
    assert set(_found(lvis, caption).values()) == {"person", "table", "lamppost"}
    nouns = lvis(["A man at a table.", "Men sit at tables."])  # each phrase once, all captions
    names = lvis_vocabulary()
    assert nouns.nouns == (("man", names.index("person")), ("table", names.index("table")))
    assert lvis.class_names == lvis_vocabulary()


def _reference(matcher, caption):
    """The matcher's rule written out phrase by phrase (each phrase's first whole-word run)."""
    from ovseg.data.captions.nouns import _WORD, _word_lemmas

    words = [_word_lemmas(w) for w in _WORD.findall(caption.lower())]
    found = []
    for phrase, cid in matcher.phrases.items():
        for i in range(len(words) - len(phrase) + 1):
            if all(p in words[i + j] for j, p in enumerate(phrase)):
                found.append((i, " ".join(phrase), cid))
                break
    return [(p, c) for _, p, c in sorted(found)]


def test_the_scan_by_first_lemma_finds_what_every_phrase_finds(lvis):
    # the toy world's captions (whose pseudo-labels are recorded) and COCO / LVIS phrasing
    toy = CaptionNounMatcher.toy()
    captions = [c for i in range(40) for c in generate_sample(0, "training", i)[2]]
    assert captions and all(toy.match_caption(c) == _reference(toy, c) for c in captions)
    coco = CaptionNounMatcher.coco65()
    more = [
        "A teddy bear and a bear cub near a hot dog stand.",
        "Cell phones, laptop computers and a tv set on a dining table.",
        "A double-decker bus passes a fire hydrant; a man ties his necktie.",
    ]
    for caption in more + captions[:10]:
        assert coco.match_caption(caption) == _reference(coco, caption)
        assert lvis.match_caption(caption) == _reference(lvis, caption)
