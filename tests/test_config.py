import pytest

from dmdl.config import load_config, parse_overrides, preset_names


def test_presets_load_and_carry_published_values():
    assert {"sysu", "regdb", "llcm", "regdb-cpu"} <= set(preset_names())
    sysu = load_config("sysu")
    assert (sysu.stage1_epochs, sysu.stage2_epochs, sysu.iters, sysu.eps, sysu.k1) == (50, 50, 200, 0.6, 30)
    regdb = load_config("regdb")
    assert (regdb.stage1_epochs, regdb.iters, regdb.eps) == (30, 100, 0.3)
    llcm = load_config("llcm")
    assert (llcm.k1, llcm.eps) == (25, 0.6)
    for name in preset_names():
        cfg = load_config(name)
        assert cfg.lr == 3.5e-4 and cfg.temperature == 0.05 and cfg.momentum == 0.2


def test_overrides_are_typed():
    cfg = load_config("regdb", ["--stage1-epochs", "3", "--eps=0.5", "--cache-images", "true", "--resume", "none"])
    assert cfg.stage1_epochs == 3 and cfg.eps == 0.5 and cfg.cache_images is True and cfg.resume is None
    assert parse_overrides(["--a-b", "1", "--c=2"]) == {"a_b": "1", "c": "2"}


@pytest.mark.parametrize(
    "args,match",
    [
        (["--no-such-key", "1"], "unknown config key 'no_such_key'"),
        (["--k1", "abc"], "k1: cannot read 'abc' as int"),
        (["--trial", "11"], "trial must be in 1..10"),
        (["--batch-size", "30", "--num-instances", "16"], "multiple of num_instances"),
        (["--k1"], "missing value"),
    ],
)
def test_bad_overrides_raise(args, match):
    with pytest.raises(ValueError, match=match):
        load_config("regdb", args)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        load_config("nope")
