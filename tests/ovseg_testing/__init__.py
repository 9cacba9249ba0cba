"""Helpers shared by the tests, in one place; import them from here
(``from ovseg_testing import ROOT, tiny_lseg``: tests/ is on pytest's ``pythonpath``).

- ``paths``: the repository root, configs/ and the tiny CLIP model configs;
- ``data``: datasets in real on-disk layouts (and registering them for a while), images,
  hand-built batches, the real mappers in the settings the tests use;
- ``configs``: overrides shrinking a shipped config to a CPU test, per meta-architecture;
- ``models``: tiny random-init models: the CLIP teacher and one ``tiny_<method>_cfg`` /
  ``tiny_<method>`` pair per student;
- ``pseudo``: a pseudo-label store and a fake teacher;
- ``checkpoints``: a saved checkpoint damaged as a disk or a bad copy would;
- ``golden``: ``assert_golden``, the golden-output regression;
- ``ops``: ``OpNames``, the aten operators a call dispatches;
- ``demo``: demo/predictor.py and demo/demo.py, imported as the script imports them;
- ``scripts``: running train_net.py, demo/demo.py and tools/ in a subprocess;
- ``distributed``: a spawned worker's gloo group, ended as ovseg's launch ends it.

Fixtures stay in the conftest.py files."""

from ovseg_testing.checkpoints import flip_tensor_byte
from ovseg_testing.configs import (
    ADE20K_OPTS,
    CPU_OPTS,
    INSTANCE_OPTS,
    PANOPTIC_OPTS,
    SMALL_OPTS,
    TOY_WORLD_OPTS,
    cpu_opts,
    header_commands,
    is_resnet_clip,
    small_semfpn_opts,
    tiny_clip_opts,
)
from ovseg_testing.data import (
    ADE,
    BED,
    GRASS,
    SKY,
    TABLE,
    crop_flip_augmentations,
    eval_mapper,
    padded_train_mapper,
    position_pattern,
    random_image,
    random_image_batch,
    registered_ade20k,
    registered_fewshot,
    registered_toy_world,
    two_region_batch,
    write_ade20k_fixture,
    write_random_images,
    write_two_region_image,
    write_unseen_fixture,
    zero_shot_train_mapper,
)
from ovseg_testing.demo import DEMO_DIR, load_demo_modules, load_script
from ovseg_testing.golden import Tol, assert_golden, dumps_golden
from ovseg_testing.models import (
    MASKCLIP_CONFIG,
    TINY_DEEPLAB_STUDENT,
    TINY_FREESEG,
    fit_steps,
    random_clip_model,
    tiny_clip_cfg,
    tiny_freeseg_cfg,
    tiny_freeseg_prompt_cfg,
    tiny_lseg,
    tiny_lseg_cfg,
    tiny_maskclip_cfg,
    tiny_maskclip_opts,
    tiny_maskclip_plus,
    tiny_maskclip_plus_cfg,
    tiny_xpm_cfg,
    tiny_zegclip,
    tiny_zegclip_cfg,
    xpm_batch,
)
from ovseg_testing.ops import OpNames
from ovseg_testing.paths import CONFIGS, ROOT, TINY_RN, TINY_VIT
from ovseg_testing.pseudo import NAMES5, FakeTeacher, make_store
from ovseg_testing.scripts import run_main, run_patched, run_script, subprocess_env

__all__ = [
    "ADE",
    "ADE20K_OPTS",
    "INSTANCE_OPTS",
    "PANOPTIC_OPTS",
    "CPU_OPTS",
    "SMALL_OPTS",
    "TOY_WORLD_OPTS",
    "cpu_opts",
    "small_semfpn_opts",
    "header_commands",
    "is_resnet_clip",
    "tiny_clip_opts",
    "BED",
    "CONFIGS",
    "DEMO_DIR",
    "GRASS",
    "MASKCLIP_CONFIG",
    "NAMES5",
    "ROOT",
    "SKY",
    "TABLE",
    "TINY_DEEPLAB_STUDENT",
    "TINY_RN",
    "TINY_VIT",
    "FakeTeacher",
    "Tol",
    "OpNames",
    "assert_golden",
    "crop_flip_augmentations",
    "dumps_golden",
    "eval_mapper",
    "load_demo_modules",
    "load_script",
    "make_store",
    "padded_train_mapper",
    "position_pattern",
    "fit_steps",
    "flip_tensor_byte",
    "random_clip_model",
    "random_image",
    "random_image_batch",
    "registered_ade20k",
    "registered_fewshot",
    "registered_toy_world",
    "run_main",
    "run_patched",
    "run_script",
    "subprocess_env",
    "tiny_clip_cfg",
    "tiny_lseg",
    "tiny_lseg_cfg",
    "tiny_maskclip_cfg",
    "tiny_maskclip_opts",
    "tiny_maskclip_plus",
    "tiny_maskclip_plus_cfg",
    "tiny_zegclip",
    "TINY_FREESEG",
    "tiny_freeseg_cfg",
    "tiny_xpm_cfg",
    "xpm_batch",
    "tiny_freeseg_prompt_cfg",
    "tiny_zegclip_cfg",
    "two_region_batch",
    "write_ade20k_fixture",
    "write_random_images",
    "write_two_region_image",
    "write_unseen_fixture",
    "zero_shot_train_mapper",
]
