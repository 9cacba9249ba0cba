import dataclasses
import json

import pytest

from detectron2.data import Metadata

from ovseg.vocab import (
    Vocabulary,
    builtin_vocabulary_names,
    check_templates,
    resolve_vocabulary,
    split_synonyms,
)


def test_split_properties():
    vocab = Vocabulary(("a", "b", "c", "d"), unseen=("c", "a"))
    assert len(vocab) == 4
    assert vocab.unseen == ("c", "a")
    assert vocab.unseen_indices == (0, 2)
    assert vocab.seen_indices == (1, 3)
    assert vocab.seen == ("b", "d")
    assert vocab.templates == ("a photo of a {}.",)


def test_lists_become_tuples_and_names_are_stripped():
    vocab = Vocabulary([" cat", "dog "], templates=["a {}."], unseen=["DOG"])
    assert vocab.names == ("cat", "dog")
    assert vocab.templates == ("a {}.",)
    # unseen names take the vocabulary's spelling
    assert vocab.unseen == ("dog",)
    assert hash(vocab) == hash(Vocabulary(("cat", "dog"), ("a {}.",), ("dog",)))


def test_frozen():
    vocab = Vocabulary(("cat",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        vocab.names = ("dog",)


def test_duplicates_are_named():
    with pytest.raises(ValueError, match=r"Duplicate.*'cat' at positions \[0, 2\]"):
        Vocabulary(("cat", "dog", " Cat "))


def test_empty_name_is_located():
    with pytest.raises(ValueError, match="position 1 is empty"):
        Vocabulary(("cat", "  ", "dog"))


def test_empty_vocabulary():
    with pytest.raises(ValueError, match="vocabulary is empty"):
        Vocabulary(())


def test_string_as_names_is_refused():
    with pytest.raises(ValueError, match="from_string"):
        Vocabulary("cat,dog")


def test_unknown_unseen_is_named():
    with pytest.raises(ValueError, match="Unseen class 'cow' is not in the vocabulary"):
        Vocabulary(("cat", "dog"), unseen=("cow",))


def test_bad_template_is_named():
    with pytest.raises(ValueError, match=r"template 1 'a photo' must contain exactly one"):
        Vocabulary(("cat",), templates=("a {}.", "a photo"))
    with pytest.raises(ValueError, match="exactly one"):
        check_templates(["{} and {}"])
    with pytest.raises(ValueError, match="exactly one"):
        check_templates(["a {name}"])
    with pytest.raises(ValueError, match="malformed"):
        check_templates(["a {} }{"])


def test_from_string():
    vocab = Vocabulary.from_string(" cat, potted plant ,dog")
    assert vocab.names == ("cat", "potted plant", "dog")
    assert Vocabulary.from_string("sky").names == ("sky",)


@pytest.mark.parametrize("text, position", [("cat,,dog", 1), ("cat,dog,", 2), (" ,cat", 0)])
def test_from_string_empty_item(text, position):
    with pytest.raises(ValueError, match=f"Item {position} .* is empty"):
        Vocabulary.from_string(text)


def test_from_json_list_and_object(tmp_path):
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps(["cat", "dog"]))
    assert Vocabulary.from_json(listed).names == ("cat", "dog")
    assert Vocabulary.from_json(listed).unseen == ()

    obj = tmp_path / "obj.json"
    obj.write_text(
        json.dumps({"name": "pets", "classes": ["cat", "dog", "cow"], "unseen": ["cow"]})
    )
    vocab = Vocabulary.from_json(str(obj))
    assert vocab.names == ("cat", "dog", "cow")
    assert vocab.unseen_indices == (2,)


def test_from_json_errors_name_file_and_schema(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError, match=r"missing\.json.*\"classes\""):
        Vocabulary.from_json(missing)

    broken = tmp_path / "broken.json"
    broken.write_text('["cat", ')
    with pytest.raises(ValueError, match=r"broken\.json.*not valid JSON.*\"classes\""):
        Vocabulary.from_json(broken)

    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"classes": ["cat"], "unsen": []}))
    with pytest.raises(ValueError, match=r"typo\.json.*unknown keys \['unsen'\]"):
        Vocabulary.from_json(typo)

    number = tmp_path / "number.json"
    number.write_text("3")
    with pytest.raises(ValueError, match=r"number\.json.*holds a int"):
        Vocabulary.from_json(number)

    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps(["cat", "cat"]))
    with pytest.raises(ValueError, match=r"dup\.json.*Duplicate"):
        Vocabulary.from_json(dup)

    unseen = tmp_path / "unseen.json"
    unseen.write_text(json.dumps({"classes": ["cat"], "unseen": ["cow"]}))
    with pytest.raises(ValueError, match=r"unseen\.json.*'cow' is not in the vocabulary"):
        Vocabulary.from_json(unseen)


def test_from_metadata():
    meta = Metadata(name="toy_meta", stuff_classes=["a", "b", "c"], unseen_classes=["b"])
    vocab = Vocabulary.from_metadata(meta)
    assert vocab.names == ("a", "b", "c")
    assert vocab.unseen == ("b",)
    # no unseen_classes key: no split
    assert Vocabulary.from_metadata(Metadata(name="x", stuff_classes=["a"])).unseen == ()
    with pytest.raises(ValueError, match="'empty_meta' has no 'stuff_classes'"):
        Vocabulary.from_metadata(Metadata(name="empty_meta"))


def test_builtins():
    names = builtin_vocabulary_names()
    for expected in ("ade150", "ade847", "coco171", "pc459", "pc59", "voc20"):
        assert expected in names
    voc = Vocabulary.builtin("voc20")
    assert len(voc) == 20
    assert voc.unseen == ("potted plant", "sheep", "sofa", "train", "tv monitor")
    assert voc.unseen_indices == (15, 16, 17, 18, 19)
    assert len(voc.seen) == 15
    with pytest.raises(ValueError, match=r"Unknown builtin vocabulary 'voc99'.*'voc20'"):
        Vocabulary.builtin("voc99")


def test_resolve_vocabulary(tmp_path):
    meta = Metadata(name="toy_meta", stuff_classes=["a", "b"], unseen_classes=["b"])
    assert resolve_vocabulary("", meta).names == ("a", "b")
    assert resolve_vocabulary("  ", meta).unseen == ("b",)
    assert len(resolve_vocabulary("voc20")) == 20
    assert resolve_vocabulary("cat, dog").names == ("cat", "dog")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(["x", "y", "z"]))
    assert resolve_vocabulary(str(path)).names == ("x", "y", "z")


def test_resolve_vocabulary_errors(tmp_path):
    with pytest.raises(ValueError, match="no dataset metadata"):
        resolve_vocabulary("")
    with pytest.raises(ValueError, match=r"Unknown vocabulary 'voc99'.*'ade150'.*comma"):
        resolve_vocabulary("voc99")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json"):
        resolve_vocabulary(str(tmp_path / "nowhere.json"))
    with pytest.raises(ValueError, match="Item 1"):
        resolve_vocabulary("cat,,dog")


def test_synonym_syntax():
    # ';' separates classes, ',' a class's synonyms; without ';' commas separate classes
    vocab = Vocabulary.from_string("pickup truck,  truck; sky ;")
    assert vocab.names == ("pickup truck, truck", "sky")
    assert Vocabulary.from_string("pickup truck, truck").names == ("pickup truck", "truck")
    assert resolve_vocabulary("cat; dog, puppy").names == ("cat", "dog, puppy")
    assert split_synonyms("pickup truck, truck") == ("pickup truck", "truck")
    assert split_synonyms("sky") == ("sky",)
    with pytest.raises(ValueError, match="Class 1 of the vocabulary 'cat; ; dog' is empty"):
        Vocabulary.from_string("cat; ; dog")
    with pytest.raises(ValueError, match="'dog,,puppy' has an empty synonym"):
        Vocabulary.from_string("cat; dog,,puppy")


def test_builtins_keep_their_synonyms():
    ade = Vocabulary.builtin("ade150")
    assert "road, route" in ade.names
    assert split_synonyms("road, route") == ("road", "route")
