import numpy as np
import pytest

from dmdl.config import load_config, parse_overrides, preset_names


def flat(name, *args):
    """A preset's (with overrides) flat keys, as the command line and presets spell them."""
    return load_config(name, list(args)).to_dict()


def test_presets_load_and_carry_published_values():
    assert {"sysu", "regdb", "llcm", "regdb-cpu"} <= set(preset_names())
    sysu = flat("sysu")
    assert [sysu[k] for k in ("stage1_epochs", "stage2_epochs", "iters", "eps", "k1")] == [50, 50, 200, 0.6, 30]
    regdb = flat("regdb")
    assert [regdb[k] for k in ("stage1_epochs", "iters", "eps")] == [30, 100, 0.3]
    llcm = flat("llcm")
    assert (llcm["k1"], llcm["eps"]) == (25, 0.6)
    for name in preset_names():
        cfg = flat(name)
        # memory momentum: 0.2 in DMDL (docs/dmdl.md#A8), 0.1 in MULT (docs/mult.md#B4)
        assert cfg["lr"] == 3.5e-4 and cfg["temperature"] == 0.05
        assert cfg["momentum"] == (0.1 if cfg["method"] == "mult" else 0.2)


def test_overrides_are_typed():
    cfg = load_config("regdb", ["--stage1-epochs", "3", "--eps=0.5", "--cache-images", "true", "--resume", "none"])
    assert cfg.schedule.stage1_epochs == 3 and cfg.clustering.eps == 0.5 and cfg.data.cache_images is True
    assert cfg.run.resume is None
    assert parse_overrides(["--a-b", "1", "--c=2"]) == {"a_b": "1", "c": "2"}


@pytest.mark.parametrize(
    "args,match",
    [
        (["--no-such-key", "1"], "unknown config key --no-such-key"),
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


# ---- parse_schedule, validate() of the newer keys, every preset, parse_trials ----

from dmdl.config import Config, parse_schedule, parse_trials  # noqa: E402


def test_parse_schedule_values():
    assert parse_schedule("0:0,16:0.25") == ((0, 0.0), (16, 0.25))
    assert parse_schedule(" 0:0 , 11:0.5 ,21:1 ") == ((0, 0.0), (11, 0.5), (21, 1.0))
    assert parse_schedule("") == ()
    assert parse_schedule("5:2") == ((5, 2.0),)


@pytest.mark.parametrize("text", ["0-0", "0:a", "x:1", "0:0:1", "0:0,16", "0:0,0:1", "5:0,3:1", "0:-0.5"])
def test_parse_schedule_rejects_bad_text_naming_the_key(text):
    with pytest.raises(ValueError, match="stage1_triplet"):
        parse_schedule(text, "stage1_triplet")


@pytest.mark.parametrize(
    "args,match",
    [
        (["--stage1-triplet", "0:0,0:1"], "stage1_triplet"),
        (["--stage2-triplet", "0:x"], "stage2_triplet"),
        (["--arch", "mobilenet_v2", "--non-local", "true"], "non_local"),
        (["--last-stride", "3"], "last_stride"),
        (["--renormalize", "sometimes"], "renormalize"),
        (["--matching", "sample"], "matching"),
        (["--erasing-max-area", "0.01"], "erasing_max_area"),
        (["--erasing-max-area", "1.5"], "erasing_max_area"),
        (["--erasing-max-area-stage2", "0"], "erasing_max_area_stage2"),
        (["--erasing-max-area-stage2", "1.01"], "erasing_max_area_stage2"),
        (["--method", "nope"], "method"),
        (["--k1-mapped", "-1"], "k1_mapped"),
        (["--cross-memory", "both"], "cross_memory"),
    ],
)
def test_validate_rejects_new_keys(args, match):
    with pytest.raises(ValueError, match=match):
        load_config("regdb", args)


def test_validate_accepts_new_key_values():
    cfg = flat("regdb", "--arch", "mobilenet_v2", "--non-local", "false", "--last-stride", "2",
               "--renormalize", "always", "--matching", "regdb-cycle",
               "--erasing-max-area", "0.02", "--erasing-max-area-stage2", "1",
               "--stage1-triplet", "", "--cross-memory", "shared")
    assert [cfg[k] for k in ("arch", "non_local", "last_stride", "matching")] == ["mobilenet_v2", False, 2, "regdb-cycle"]
    assert cfg["stage1_triplet"] == "" and cfg["erasing_max_area"] == 0.02
    assert Config().validate() is not None


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert cfg.validate() is cfg
    assert load_config(cfg.to_dict()).to_dict() == cfg.to_dict()  # a run's config.json reads back


def test_parse_trials():
    assert parse_trials("all") == list(range(1, 11))
    assert parse_trials("ALL") == list(range(1, 11))
    assert parse_trials("1,3") == [1, 3]
    assert parse_trials("2") == [2]
    assert parse_trials(10) == [10]


@pytest.mark.parametrize("text", ["0", "11", "x", "", "1,11", "1;3"])
def test_parse_trials_rejects(text):
    with pytest.raises(ValueError, match="trial"):
        parse_trials(text)


# docs/dmdl.md#A1.1 (stage lengths, iterations, batch, LR step, top-k, k1, eps) and docs/dmdl.md#A10
# (Adam 3.5e-4, weight decay 5e-4), docs/dmdl.md#A4.1/#A8 (momentum 0.2, temperature 0.05, lambda_cai 0.5,
# lambda_fa 1), docs/dmdl.md#A4.3/#A5.4/#A5.6 (refinement from stage-1 epoch 30 and stage-2 epoch 5; late
# inter-modality epochs from 40 on SYSU/LLCM, 25 on RegDB; one global GMM on RegDB), typed in
# from the spec's table, not read from the presets.
PUBLISHED = {
    "sysu": dict(stage1_epochs=50, stage2_epochs=50, iters=200, k1=30, k1_mapped=15, eps=0.6,
                 inter_modality_from=40, certainty_per_cluster=True, renormalize="never"),
    "regdb": dict(stage1_epochs=30, stage2_epochs=30, iters=100, k1=30, k1_mapped=0, eps=0.3,
                  inter_modality_from=25, certainty_per_cluster=False, renormalize="stage2",
                  matching="regdb-cycle", erasing_max_area_stage2=0.6),
    "llcm": dict(stage1_epochs=50, stage2_epochs=50, iters=200, k1=25, k1_mapped=15, eps=0.6,
                 inter_modality_from=40, certainty_per_cluster=True, renormalize="never"),
}
COMMON = dict(arch="resnet50", pretrained="imagenet", non_local=True, last_stride=1, height=288, width=144,
              batch_size=128, num_instances=16, step_size=20, gamma=0.1, lr=3.5e-4, weight_decay=5e-4,
              topk_stage1=3, topk_stage2=10, k2=6, min_samples=4, momentum=0.2, temperature=0.05,
              lambda_cai=0.5, lambda_fa=1.0, triplet_margin=0.3, refine_from_stage1=30, refine_from_stage2=5,
              cai=True, cbt_data=True, cbt_label=True, cbt_feature=True, association="imca", cross_weight=0.0,
              erasing_max_area=0.5, ghost_bn_groups=4, stage1_triplet="0:0,16:0.25,26:0.5,36:1", stage2_triplet="0:0,11:0.5,21:1")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_presets_match_the_spec_table(name):
    cfg = flat(name)
    expected = dict(COMMON, **PUBLISHED[name])
    wrong = {k: (cfg[k], v) for k, v in expected.items() if cfg[k] != v}
    assert not wrong, f"{name}: (preset, spec) differ: {wrong}"


@pytest.mark.parametrize("base", ["sysu", "regdb", "regdb-cpu"])
def test_ablation_presets_switch_exactly_the_table_3_modules(base):
    rows = {  # Table 3 of the DMDL paper (docs/dmdl.md#A12.3): CAI, CBT-data, CBT-label, CBT-feature
        "baseline": (False, False, False, False), "cai": (True, False, False, False),
        "cai-data": (True, True, False, False), "cai-data-label": (True, True, True, False),
        "cai-data-feature": (True, True, False, True), "cbt": (False, True, True, True),
        "dmdl": (True, True, True, True),
    }
    ref = flat(base)
    same = ("dataset", "arch", "stage1_epochs", "stage2_epochs", "iters")
    for row, flags in rows.items():
        cfg = flat(f"{base}-{row}")
        assert (cfg["cai"], cfg["cbt_data"], cfg["cbt_label"], cfg["cbt_feature"]) == flags, row
        assert cfg["cross_weight"] == 0.0 and cfg["association"] == "imca"
        assert [cfg[k] for k in same] == [ref[k] for k in same]
    assert flat(f"{base}-ot")["association"] == "ot"
    assert flat(f"{base}-hungarian")["association"] == "hungarian"


def test_base_presets_nest_and_yaml_files_can_extend_presets(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: regdb-cpu-dmdl\nlambda_cai: 0.25\n")
    cfg = load_config(str(f))
    assert cfg.method.lambda_cai == 0.25 and cfg.method.cai and cfg.model.arch == "mobilenet_v2"
    g = tmp_path / "loop.yaml"
    g.write_text(f"base: {g}\n")
    with pytest.raises(ValueError, match="nest"):
        load_config(str(g))


def test_lr_milestones_count_epochs_over_both_stages():
    """MULT's schedule (docs/mult.md#B5): x0.1 at epochs 20, 60, 80 of 40 + 50, across the stage boundary."""
    import torch

    from dmdl.config import parse_milestones
    from dmdl.engine import Engine
    from dmdl.training.context import RunContext

    cfg = load_config("regdb-mult")
    assert parse_milestones(cfg.schedule.lr_milestones) == (20, 60, 80)
    eng = Engine.__new__(Engine)  # only what _make_optimizer reads
    eng.cfg, eng._optim_state = cfg, None
    eng.ctx = RunContext(model=torch.nn.Linear(2, 2), device=torch.device("cpu"), train={}, height=1, width=1,
                         batch_size=1)
    seen = []
    for stage in (1, 2):
        eng._make_optimizer(stage)
        for _ in range(cfg.schedule.epochs(stage)):
            seen.append(eng.ctx.optimizer.param_groups[0]["lr"])
            eng.scheduler.step()
    expected = [3.5e-4] * 20 + [3.5e-5] * 40 + [3.5e-6] * 20 + [3.5e-7] * 10
    np.testing.assert_allclose(seen, expected, rtol=1e-9)
    for bad in ("20,10", "0,5", "x"):
        with pytest.raises(ValueError, match="lr_milestones"):
            load_config("regdb", ["--lr-milestones", bad])


def test_mult_presets_and_iters_per_stage():
    sysu = load_config("sysu-mult")
    assert (sysu.method.name, sysu.data.dataset, sysu.clustering.eps) == ("mult", "sysu", 0.6)
    assert (sysu.schedule.iters_for(1), sysu.schedule.iters_for(2)) == (300, 200)
    cpu = load_config("regdb-cpu-mult")
    assert cpu.model.arch == "mobilenet_v2" and cpu.model.two_stream
    assert cpu.schedule.iters_for(2) == cpu.schedule.iters == 30
    with pytest.raises(ValueError, match="cross_affinity"):
        load_config("regdb-mult", ["--cross-affinity", "sparse"])
    with pytest.raises(ValueError, match="association"):
        load_config("regdb", ["--association", "lp"])
    assert load_config("regdb", ["--association", "mult"]).method.association == "mult"


# ---- sections: keys owned by one section, read by the method or refused ----


def test_a_key_the_method_does_not_read_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="--cai is a key of method dmdl; this run's method is mult"):
        load_config("regdb-cpu-mult", ["--cai", "true"])  # even at DMDL's default value
    with pytest.raises(ValueError, match="--lambda-oclr is a key of method mult"):
        load_config("regdb-cpu", ["--lambda-oclr", "1"])
    with pytest.raises(ValueError, match=r"--mult-alpha \(transfer section\) is not read by method dmdl.*association "
                                         r"is imca"):
        load_config("regdb-cpu", ["--mult-alpha", "0.3"])
    cfg = load_config("regdb-cpu", ["--association", "mult", "--mult-alpha", "0.3"])
    assert cfg.transfer.mult_alpha == 0.3 and cfg.to_dict()["mult_alpha"] == 0.3
    assert "mult_alpha" not in load_config("regdb-cpu").to_dict()  # a section the run does not read is not saved


def test_sections_own_their_keys_and_defaults():
    from dmdl.config import SHARED_SECTIONS, key_owners

    for method, preset in (("dmdl", "regdb-cpu"), ("mult", "regdb-cpu-mult")):
        owners = key_owners(method)
        cfg = load_config(preset)
        for key, section in owners.items():  # every key in exactly one section, reachable by its name
            assert hasattr(getattr(cfg, section.section), key)
    import dataclasses

    shared = [f.name for cls in SHARED_SECTIONS for f in dataclasses.fields(cls)]
    assert len(shared) == len(set(shared))
    assert load_config({"method": "dmdl"}).method.momentum == 0.2  # docs/dmdl.md#A8
    assert load_config({"method": "mult", "two_stream": True, "batch_size": 64, "num_instances": 16}
                       ).method.momentum == 0.1  # docs/mult.md#B4


def test_a_config_json_of_the_flat_version_still_reads():
    """v0.4 saved every key of every method in config.json and checkpoints: keys this run does not
    read are dropped when they hold their default; anything else is refused."""
    from dmdl.config import config_from_saved

    old_mult = dict(load_config({}).to_dict(), **flat("regdb-cpu-mult"))  # DMDL's keys at their defaults
    cfg = config_from_saved(old_mult)
    assert cfg.method.name == "mult" and cfg.model.two_stream and cfg.method.momentum == 0.1
    assert load_config(old_mult, ["--k1", "7"]).clustering.k1 == 7
    with pytest.raises(ValueError, match="--lambda-cai is a key of method dmdl"):
        config_from_saved(dict(old_mult, lambda_cai=0.9))


def test_amp_auto_is_fp16_on_cuda_and_bf16_only_on_cpus_that_multiply_it_natively(monkeypatch):
    import torch

    from dmdl.training.context import amp_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype("auto", cuda) is torch.float16 and amp_dtype("cuda", cuda) is torch.float16
    assert amp_dtype("cuda", cpu) is None and amp_dtype("off", cuda) is None and amp_dtype("bf16", cpu) is torch.bfloat16
    for caps, want in (({"avx2": True}, None), ({"avx512f": True, "avx512_bf16": False}, None),
                       ({"avx512f": True, "avx512_bf16": True}, torch.bfloat16), ({"amx_bf16": True}, torch.bfloat16)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: dict(caps))
        assert amp_dtype("auto", cpu) is want, caps
    with pytest.raises(ValueError, match="amp: fp16 needs a CUDA device"):
        amp_dtype("fp16", cpu)
    # v0.4 saved amp as a bool: true meant fp16 on CUDA only, false float32
    assert load_config("regdb", ["--amp", "true"]).run.amp == "cuda"
    assert load_config("regdb", ["--amp", "false"]).run.amp == "off"
    with pytest.raises(ValueError, match="amp must be"):
        load_config("regdb", ["--amp", "fp8"])


def test_a_config_key_is_never_read_as_an_abbreviated_option():
    from dmdl.cli import build_parser

    parser, _ = build_parser()
    args, extra = parser.parse_known_args(["train", "--config", "regdb", "--seed", "2", "--nproc-per", "3"])
    assert args.seeds is None and args.nproc is None  # not --seeds / --nproc
    assert load_config("regdb", extra[:2]).run.seed == 2
