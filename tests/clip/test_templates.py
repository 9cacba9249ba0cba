import hashlib
import json

import pytest

from ovseg.clip.templates import TEMPLATE_SETS, get_templates


def _digest(templates):
    return hashlib.sha256("\n".join(templates).encode()).hexdigest()


def test_set_sizes():
    assert get_templates("single") == ("a photo of a {}.",)
    assert len(get_templates("imagenet80")) == 80
    assert len(get_templates("vild")) == 14
    assert len(get_templates("maskclip85")) == 85
    for name, templates in TEMPLATE_SETS.items():
        assert len(set(templates)) == len(templates), f"{name} has a repeated template"
        for template in templates:
            assert template.count("{}") == 1, (name, template)


def test_imagenet80_matches_open_clip():
    # open_clip ships CLIP's 80 ImageNet templates (as callables): an independent copy.
    zero_shot_metadata = pytest.importorskip("open_clip.zero_shot_metadata")
    ours = [t.format("zebra") for t in get_templates("imagenet80")]
    theirs = [f("zebra") for f in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES]
    assert ours == theirs


def test_maskclip85_is_imagenet80_plus_scene_templates():
    templates = get_templates("maskclip85")
    assert templates[:80] == get_templates("imagenet80")
    assert templates[80:] == (
        "there is a {} in the scene.",
        "there is the {} in the scene.",
        "this is a {} in the scene.",
        "this is the {} in the scene.",
        "this is one {} in the scene.",
    )
    # digest of `prompt_templates` in chongzhou96/MaskCLIP
    # tools/maskclip_utils/prompt_engineering.py
    assert _digest(templates) == "f87d863dc7a96d46812438cf13a8a071e340f7be26222d17a0b61d41d28c0984"


def test_vild_matches_reference():
    templates = get_templates("vild")
    assert templates[0] == "a photo of a {}."
    assert templates[-1] == "There is a large {} in the scene."
    # digest of VILD_PROMPT in facebookresearch/ov-seg open_vocab_seg/modeling/clip_adapter
    assert _digest(templates) == "20c81c13267c6b932d64146a292f740d2630ab9a403650b066628fa670a7a1b7"


def test_json_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(["a {}.", "the {} here."]))
    assert get_templates(str(path)) == ("a {}.", "the {} here.")
    assert get_templates(path) == ("a {}.", "the {} here.")


def test_json_file_bad_template_is_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(["a {}.", "no placeholder", "{} {}"]))
    with pytest.raises(ValueError, match=r"bad\.json.*template 1 'no placeholder'.*exactly one"):
        get_templates(str(path))


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"templates": ["a {}."]}', "holds a dict"),
        ('["a {}."', "not valid JSON"),
        ("[]", "no prompt"),
    ],
)
def test_json_file_errors(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        get_templates(str(path))


def test_unknown_set_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown prompt-template set 'imagenet81'.*'maskclip85'"):
        get_templates("imagenet81")
    with pytest.raises(FileNotFoundError, match=r"gone\.json"):
        get_templates(str(tmp_path / "gone.json"))
