"""config_value: a dotted key's value, a default or a KeyError for one the config lacks."""

import pytest
from ovseg_testing import ROOT

from ovseg.engine.defaults import load_config
from ovseg.utils.config_keys import config_value


def test_a_dotted_key_reads_the_config_and_a_missing_one_is_named():
    cfg = load_config(str(ROOT / "configs/toy/lseg_toyrn_400_bs8.yaml"))
    assert config_value(cfg, "MODEL.CLIP.TEMPLATES") == cfg.MODEL.CLIP.TEMPLATES
    assert config_value(cfg, "MODEL.NO_SUCH.KEY", None) is None
    assert config_value(cfg, "MODEL.CLIP.TEMPLATES.DEEPER", "x") == "x"  # a leaf has no keys
    with pytest.raises(KeyError, match="MODEL.NO_SUCH.KEY"):
        config_value(cfg, "MODEL.NO_SUCH.KEY")
