"""Unknown dataset names and nonsensical solver values fail at set-up, before a model is
built or the output folder is written."""

import subprocess
import sys

import numpy as np
import pytest
from ovseg_testing import ROOT, registered_toy_world
from ovseg_testing.logs import records
from ovseg_testing.scripts import subprocess_env
from PIL import Image

from detectron2.engine import default_argument_parser

from ovseg.engine import setup

CONFIG = str(ROOT / "configs/toy/lseg_toyrn_400_bs8.yaml")


def _setup(tmp_path, *opts: str):
    out = tmp_path / "run"
    args = default_argument_parser().parse_args(
        ["--config-file", CONFIG, "OUTPUT_DIR", str(out), *opts]
    )
    return setup(args), out


@pytest.mark.parametrize("key", ["TRAIN", "TEST"])
def test_unknown_dataset_name_names_the_closest(tmp_path, key):
    with pytest.raises(KeyError, match=f"DATASETS.{key}.*ade20k_sem_seg_val") as info:
        _setup(tmp_path, f"DATASETS.{key}", '("ade20k_sem_seg_vall",)')
    assert "not a registered dataset" in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "key, value",
    [
        ("SOLVER.MAX_ITER", "-5"),
        ("SOLVER.MAX_ITER", "0"),
        ("SOLVER.BASE_LR", "0.0"),
        ("SOLVER.IMS_PER_BATCH", "0"),
        ("SOLVER.CHECKPOINT_PERIOD", "0"),
        ("SOLVER.WARMUP_FACTOR", "2.0"),
        ("SOLVER.MOMENTUM", "1.5"),
        ("SOLVER.WEIGHT_DECAY", "-0.1"),
        ("SOLVER.ACCUMULATE_STEPS", "0"),
        ("SOLVER.ACCUMULATE_STEPS", "3"),  # does not divide the config's IMS_PER_BATCH
        ("TEST.EVAL_PERIOD", "-1"),
    ],
)
def test_nonsensical_solver_value_fails_at_setup(tmp_path, key, value):
    with pytest.raises(ValueError, match=f"{key}={value}"):
        _setup(tmp_path, key, value)
    assert not (tmp_path / "run").exists()


def test_valid_config_passes(tmp_path):
    cfg, out = _setup(tmp_path)
    assert cfg.SOLVER.MAX_ITER > 0 and (out / "config.yaml").is_file()


def test_train_net_refuses_an_unknown_test_dataset_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path)]
        + ["DATASETS.TEST", '("toy_world_sem_seg_vall",)', "SOLVER.MAX_ITER", "1"],
        cwd=ROOT,
        env=subprocess_env(tmp_path / "no_datasets"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "toy_world_sem_seg_val'" in proc.stderr and "closest" in proc.stderr
    assert "Starting training" not in proc.stdout + proc.stderr


def test_every_shipped_config_passes_the_checks(tmp_path):
    import importlib.util

    from ovseg.engine.checks import check_config
    from ovseg.engine.defaults import load_config

    files = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "clip")
    bert = []  # the official XPM checkpoints' classes: a tiny BERT for bert-base-uncased
    if importlib.util.find_spec("transformers") is not None:
        from ovseg_testing.bert import make_tiny_bert

        bert = ["MODEL.XPM.BERT_NAME", make_tiny_bert(tmp_path / "bert")]
    for path in files:
        cfg = load_config(str(path))
        if cfg.MODEL.XPM.CLASS_EMBEDDING == "bert" and not bert:
            with pytest.raises(ValueError, match="xpm-official"):
                check_config(cfg)
            continue
        if cfg.MODEL.XPM.CLASS_EMBEDDING == "bert":
            cfg = load_config(str(path), bert)
        check_config(cfg)


@pytest.mark.parametrize("base", ["toy/maskclip.yaml", "configs/toy/maskclip.yaml"])
def test_a_shipped_config_is_a_base_by_its_short_name(tmp_path, monkeypatch, base):
    """From an installed ovseg (or any folder), a user's own file could not inherit a
    shipped config, though Predictor("toy/maskclip.yaml") takes it by that name."""
    from ovseg.engine.defaults import load_config

    own = tmp_path / "mine" / "own.yaml"
    own.parent.mkdir()
    own.write_text(f"_BASE_: {base}\nEXTENSIONS: []\nSEED: 11\n")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(
        UserWarning, match=r"_BASE_ .*maskclip.yaml is not a file: using the shipped"
    ):
        cfg = load_config(str(own))  # said where no logging is set up yet
    shipped = load_config(str(ROOT / "configs" / "toy" / "maskclip.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == shipped.MODEL.META_ARCHITECTURE == "MaskCLIP"
    assert cfg.MODEL.CLIP.PRETRAINED == shipped.MODEL.CLIP.PRETRAINED  # its bases' values
    assert shipped.SEED != 11 and cfg.SEED == 11
    # a file next to the user's own wins over a shipped one of the same name
    (own.parent / "toy").mkdir()
    shipped_file = ROOT / "configs" / "toy" / "maskclip.yaml"
    (own.parent / "toy" / "maskclip.yaml").write_text(
        f"_BASE_: {shipped_file}\nMODEL:\n  MASKCLIP:\n    UPSAMPLE_LOGITS: True\n"
    )
    local_won = load_config(str(own)).MODEL.MASKCLIP.UPSAMPLE_LOGITS
    url = tmp_path / "url.yaml"  # a URL is detectron2's to open, never a local file's name
    url.write_text("_BASE_: https://example.invalid/configs/toy/maskclip.yaml\n")
    with pytest.raises(Exception) as info:
        load_config(str(url))
    assert "example.invalid" in str(info.value) or "URL" in type(info.value).__name__
    assert not shipped.MODEL.MASKCLIP.UPSAMPLE_LOGITS and local_won == base.startswith("toy")


def test_config_mistakes_say_what_is_wrong(tmp_path):
    from ovseg.engine.defaults import load_config

    typo = tmp_path / "typo.yaml"
    typo.write_text(f"_BASE_: {CONFIG}\nMODEL:\n  LSEG:\n    ACTIVATOIN: relu\n")
    with pytest.raises(ValueError, match=r"MODEL.LSEG.ACTIVATOIN \(set in config file .*typo"):
        load_config(str(typo))
    with pytest.raises(ValueError, match=r"overrides.*did you mean MODEL.CLIP.MODEL_NAME"):
        load_config(CONFIG, ["MODEL.CLIP.MODLE_NAME", "x"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL:\n  X: [1,\n")
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
        load_config(str(broken))
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text("_BASE_: nosuch.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"names .*nosuch.yaml, which does not exist"):
        load_config(str(orphan))
    with pytest.raises(FileNotFoundError, match="is a folder, not a file"):
        load_config(str(tmp_path))
    # a float written as an integer, in the overrides or a file: yacs's "Type mismatch"
    with pytest.raises(ValueError, match=r"WEIGHT_DECAY \(set in the overrides\) takes a float, "
                       r"as its default .*; got 0 \(an int\); write 0.0$"):  # fmt: skip
        load_config(CONFIG, ["SOLVER.WEIGHT_DECAY", "0"])
    ints = tmp_path / "ints.yaml"
    ints.write_text(f"_BASE_: {CONFIG}\nSOLVER:\n  BASE_LR: 1\n")
    with pytest.raises(
        ValueError, match=r"BASE_LR \(set in config file .*ints.yaml\) takes a float"
    ):
        load_config(str(ints))


def test_official_xpm_leaf_without_transformers_or_its_bert_ends_in_one_line(
    tmp_path, monkeypatch, capsys
):
    # as train_net.py checks a config before it starts: the official-checkpoint leaves need
    # the xpm-official extra and MODEL.XPM.BERT_NAME's BERT (here an empty folder)
    import importlib.util

    from ovseg.engine.checks import check_config
    from ovseg.engine.defaults import load_config
    from ovseg.utils.cli import run_reporting_errors

    leaf = ROOT / "configs/coco/xpm/xpm_student_bert_official-checkpoint_eval.yaml"
    cfg = load_config(str(leaf), ["MODEL.XPM.BERT_NAME", str(tmp_path)])
    wants = ["xpm-official"]
    if importlib.util.find_spec("transformers") is not None:
        wants.insert(0, f"MODEL.XPM.BERT_NAME='{tmp_path}' is a folder without config.json")
    for want in wants:
        if want == "xpm-official":  # as without the extra
            monkeypatch.setitem(sys.modules, "transformers", None)
        assert run_reporting_errors("train_net.py", lambda: check_config(cfg)) == 2
        err = capsys.readouterr().err
        assert err.startswith("train_net.py: error: ") and want in err, err
        assert err.count("\n") == 1, err


def test_run_files_refuse_data_and_weights_not_on_disk(tmp_path, monkeypatch):
    """The README's commands with no datasets or checkpoints here: refused before a model."""
    from ovseg.engine.checks import check_run_files
    from ovseg.engine.defaults import load_config

    monkeypatch.chdir(tmp_path)  # the default dataset root ./datasets: not here
    voc = str(ROOT / "configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml")
    cfg = load_config(voc, ["MODEL.WEIGHTS", "output/voc/model_final.pth"])
    with pytest.raises(FileNotFoundError, match=r"DATASETS.TEST names 'voc_sem_seg_val', whose"):
        check_run_files(cfg, eval_only=True)
    with pytest.raises(FileNotFoundError, match=r"DATASETS.TRAIN .*DETECTRON2_DATASETS") as info:
        check_run_files(cfg)
    assert "datasets/README.md" in str(info.value)
    with registered_toy_world(tmp_path / "world", num_train=1, num_val=1):
        check_run_files(load_config(CONFIG))  # the toy run as shipped: everything on disk
        toy = load_config(CONFIG, ["MODEL.WEIGHTS", "output/run/model_final.pth"])
        with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS output/run/model_final.pth"):
            check_run_files(toy, eval_only=True)
        # a run's folder instead of its checkpoint: refused as a folder, as loading would
        (tmp_path / "output/run").mkdir(parents=True)
        folder = load_config(CONFIG, ["MODEL.WEIGHTS", "output/run"])
        with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS output/run is a folder"):
            check_run_files(folder, eval_only=True)
        (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
        opts = ["MODEL.WEIGHTS", "nowhere.pth", "OUTPUT_DIR", str(tmp_path)]
        check_run_files(load_config(CONFIG, opts), resume=True)  # resuming ignores it


def test_train_net_refuses_missing_data_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path)],
        cwd=ROOT,
        env=subprocess_env(tmp_path / "no_datasets"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net.py: error: DATASETS.TRAIN names 'toy_world_sem_seg_"), last
    assert "Traceback" not in proc.stderr and not (tmp_path / "config.yaml").exists()


def test_run_files_point_a_custom_split_at_its_registration(tmp_path, monkeypatch):
    from ovseg.engine.checks import check_run_files
    from ovseg.engine.defaults import load_config

    reg = tmp_path / "reg.yaml"
    reg.write_text("name: custom_setup_test\nvocabulary: 'a; b'\nimages: imgs\nlabels: labels\n")
    cfg = load_config(CONFIG, ["DATASETS.CUSTOM", str(reg), "DATASETS.TEST",
                               "('custom_setup_test',)"])  # fmt: skip
    with pytest.raises(FileNotFoundError) as info:
        check_run_files(cfg, eval_only=True)
    message = str(info.value)
    assert f"image folder {tmp_path / 'imgs'} does not exist" in message
    assert "registration" in message and "docs/custom_dataset.md" in message
    assert "DETECTRON2_DATASETS" not in message
    # a test label out of the vocabulary: found before training, not after it
    (tmp_path / "imgs").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imgs" / "x.jpg")
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "labels" / "x.png")
    with registered_toy_world(tmp_path / "world", num_train=1, num_val=1):
        check_run_files(cfg, eval_only=True)  # evaluation reads the split at once anyway
        with pytest.raises(ValueError, match=r"label .*x\.png holds values \[7\] outside"):
            check_run_files(cfg)
        # a training split's label: found before the run launches (its loader read it there)
        train = load_config(CONFIG, ["DATASETS.CUSTOM", str(reg), "DATASETS.TRAIN",
                                     "('custom_setup_test',)"])  # fmt: skip
        with pytest.raises(ValueError, match=r"label .*x\.png holds values \[7\] outside"):
            check_run_files(train)
        Image.fromarray(np.ones((4, 4), np.uint8)).save(tmp_path / "labels" / "x.png")
        check_run_files(train)
        # checked once per process: the launched one-process run does not read it again
        from ovseg.data.datasets import custom_labels

        def unread(path):
            raise AssertionError(f"{path} read twice")

        monkeypatch.setattr(custom_labels, "read_label", unread)
        check_run_files(train)


def test_run_mistakes_found_before_any_model(tmp_path):
    """An empty class in a vocabulary, training a training-free model, a store not made yet:
    each refused by the set-up checks that train_net.py runs first."""
    from ovseg.engine.checks import check_config, check_run_files
    from ovseg.engine.defaults import load_config

    maskclip = str(ROOT / "configs/toy/maskclip.yaml")
    cfg = load_config(maskclip, ["MODEL.OVSEG.TEST_VOCABULARY", "circle;;square"])
    with pytest.raises(ValueError, match=r"MODEL.OVSEG.TEST_VOCABULARY: Class 1 .*empty"):
        check_config(cfg)
    with registered_toy_world(tmp_path / "world", num_train=1, num_val=1):
        with pytest.raises(ValueError, match="MaskCLIP is training-free.*--eval-only"):
            check_run_files(load_config(maskclip))
        check_run_files(load_config(maskclip), eval_only=True)
        plus = ROOT / "configs/toy/maskclip_plus_toyrn_r18_transductive_300+300_bs16.yaml"
        store = tmp_path / "no_store"
        cfg = load_config(str(plus), ["DATASETS.PSEUDO_LABELS", str(store)])
        with pytest.raises(FileNotFoundError, match="not a pseudo-label store yet") as info:
            check_run_files(cfg)
        assert "tools/generate_pseudo_labels.py" in str(info.value)
        check_run_files(cfg, eval_only=True)  # evaluation reads no store

        # a generation killed (or still running): refused with its own command, which
        # finishes it; it used to end in a traceback of the launched run
        from ovseg_testing import make_store

        made = make_store(store, command="python tools/generate_pseudo_labels.py --x")
        with pytest.raises(ValueError, match="did not finish.*counts no image"):
            check_run_files(cfg)  # killed before its first image
        made.write("a", np.array([[1, 2]]), np.array([[0.3, 0.9]]))
        with pytest.raises(ValueError, match="did not finish.*checksum journals") as info:
            check_run_files(cfg)
        assert str(info.value).endswith("skipped): python tools/generate_pseudo_labels.py --x")
        made.finalize()  # the re-run finishes it
        check_run_files(cfg)


def test_shipped_config_files_resolve_from_any_folder(tmp_path, monkeypatch):
    """The toy configs name their CLIP and checkpoint relative to the repository: read from
    another folder they point into the repository, while a file of the working directory
    with that name still wins."""
    from ovseg.engine.defaults import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIG)
    assert cfg.MODEL.CLIP.MODEL_NAME == str(ROOT / "configs/clip/toy_rn.json")
    assert cfg.MODEL.CLIP.PRETRAINED == str(ROOT / "checkpoints/toy_clip_rn.pt")
    (tmp_path / "configs/clip").mkdir(parents=True)
    (tmp_path / "configs/clip/toy_rn.json").write_text("{}")
    assert load_config(CONFIG).MODEL.CLIP.MODEL_NAME == "configs/clip/toy_rn.json"


def test_train_net_ends_weights_it_cannot_fetch_in_one_line(tmp_path):
    """Offline, a detectron2:// MODEL.WEIGHTS fails while the model loads, past the set-up
    checks: one line naming the file to fetch, exit 2, no traceback."""
    with registered_toy_world(tmp_path / "world", num_train=1, num_val=1):
        last = _eval_only_error(tmp_path, "detectron2://DeepLab/R-103.pkl")
    assert last.startswith("train_net.py: error: Could not download the R-103.pkl"), last


def _eval_only_error(tmp_path, weights) -> str:
    """train_net.py --eval-only of the toy LSeg with ``weights`` in the registered toy world:
    exit 2 and no traceback; returns the error line."""
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", CONFIG, "--eval-only"]
        + ["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=ROOT,
        env=subprocess_env(tmp_path / "world"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_run_targets_refused_before_launch(tmp_path):
    """An OUTPUT_DIR that cannot be written, a finished run trained over without --resume,
    --eval-only of a trainable model without weights: each refused before any output."""
    from ovseg.engine.checks import check_run_target
    from ovseg.engine.defaults import load_config

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError, match="OUTPUT_DIR: cannot write .*a_file"):
        check_run_target(load_config(CONFIG, ["OUTPUT_DIR", str(blocker / "run")]))
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_checkpoint").write_text("model_final.pth")
    cfg = load_config(CONFIG, ["OUTPUT_DIR", str(run)])
    with pytest.raises(FileExistsError, match=r"holds a run \(its last checkpoint: model_final"):
        check_run_target(cfg)
    check_run_target(cfg, resume=True)  # continuing it
    check_run_target(cfg, eval_only=True, resume=True)  # evaluating its last checkpoint
    fresh = load_config(CONFIG, ["OUTPUT_DIR", str(tmp_path / "new")])
    with pytest.raises(ValueError, match="would score LSeg's random initialisation"):
        check_run_target(fresh, eval_only=True)
    with pytest.raises(ValueError, match="random initialisation"):
        check_run_target(fresh, eval_only=True, resume=True)  # nothing there to resume
    with records("ovseg.engine.checks") as got:  # a misspelt folder: said, then from scratch
        check_run_target(fresh, resume=True)
    seen = [r.getMessage() for r in got]
    assert any("--resume: OUTPUT_DIR" in m and "holds no last_checkpoint" in m for m in seen)
    check_run_target(fresh, eval_only=True, weights_given=True)  # MODEL.WEIGHTS "" typed
    maskclip = load_config(str(ROOT / "configs/toy/maskclip.yaml"), ["OUTPUT_DIR", str(run)])
    check_run_target(maskclip, eval_only=True)  # training-free: nothing to load
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a_file", "last_checkpoint", "run"]


def test_eval_only_resume_of_the_weights_given_says_nothing(tmp_path, monkeypatch):
    """--eval-only --resume with MODEL.WEIGHTS the very file the resume loads (a run's
    config.yaml names its model_final.pth) warned that MODEL.WEIGHTS is ignored."""
    from ovseg.engine.checks import check_run_target
    from ovseg.engine.defaults import load_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "last_checkpoint").write_text("model_final.pth")
    (run / "model_final.pth").write_bytes(b"")
    (tmp_path / "link.pth").symlink_to(run / "model_final.pth")
    monkeypatch.chdir(tmp_path)
    for given in (str(run / "model_final.pth"), "run/model_final.pth", "link.pth", "other.pth"):
        cfg = load_config(CONFIG, ["OUTPUT_DIR", str(run), "MODEL.WEIGHTS", given])
        with records("ovseg.engine.checks") as got:
            check_run_target(cfg, eval_only=True, resume=True, weights_given=True)
        said = [r.getMessage() for r in got]
        assert bool(said) == (given == "other.pth"), (given, said)
    assert "MODEL.WEIGHTS other.pth is ignored" in said[0], said


def test_train_net_ends_a_bad_weight_file_in_one_line(tmp_path):
    """A weight file found unreadable (truncated) or of another model while the model loads,
    in the launched run: one line, exit 2, no traceback."""
    truncated = tmp_path / "model_final.pth"
    import torch

    torch.save({"model": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    text = tmp_path / "notes.pth"  # no checkpoint at all (torch's unpickler: KeyError)
    text.write_text("hi\n")
    with registered_toy_world(tmp_path / "world", num_train=1, num_val=1):
        for weights, says in [(truncated, "model_final.pth"), (text, "is not a PyTorch")]:
            last = _eval_only_error(tmp_path, weights)
            assert last.startswith("train_net.py: error: ") and says in last, last
