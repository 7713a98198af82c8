"""Presets: every shipped one loads with the study's values; every kind of bad value is one clear line."""

from __future__ import annotations

import pytest

from srtool.config import dump_toml, load_preset, preset_names
from srtool.errors import UserError


def test_shipped_presets():
    assert set(preset_names()) >= {"srgan", "esrgan", "srresnet", "rrdbnet"}
    for name in preset_names():
        assert load_preset(name).name == name


def test_srgan_matches_the_study():
    p = load_preset("srgan")
    g, d = p.model.generator, p.model.discriminator
    assert (g.arch, g.n_blocks, g.n_feats, g.head_kernel, g.tail_kernel, g.batch_norm) == ("srresnet", 32, 64, 9, 9, True)
    assert (d.n_blocks, d.channels(), d.pool_size, d.hidden) == (8, [64, 64, 128, 128, 256, 256, 512, 512], 6, 1024)
    assert p.loss.perceptual.before_activation is False and p.loss.perceptual.criterion == "mse"
    assert p.loss.perceptual.feature_scale == pytest.approx(1 / 12.75)
    assert (p.loss.adversarial.kind, p.loss.adversarial.weight) == ("vanilla", 1e-3)
    assert (p.train.lr, p.train.hr_crop, p.train.batch_size, p.train.total_iters) == (1e-4, 128, 16, 150_000)


def test_esrgan_matches_the_study_and_paper():
    p = load_preset("esrgan")
    g = p.model.generator
    assert (g.arch, g.n_blocks, g.n_feats, g.growth, g.res_scale) == ("rrdbnet", 23, 64, 32, 0.2)
    assert (p.loss.adversarial.kind, p.loss.adversarial.weight) == ("ragan", 5e-3)
    assert (p.loss.pixel.criterion, p.loss.pixel.weight) == ("l1", 1e-2)
    assert (p.loss.perceptual.layer, p.loss.perceptual.before_activation, p.loss.perceptual.weight) == ("conv5_4", True, 1.0)
    assert p.train.lr == 1e-4 and p.train.scheduler.kind == "multistep" and p.train.scheduler.gamma == 0.5
    assert p.train.total_iters == 150_000


def test_psnr_presets_have_no_discriminator():
    for name, crit in (("srresnet", "mse"), ("rrdbnet", "l1")):
        p = load_preset(name)
        assert p.stage == "psnr" and p.model.discriminator is None and p.loss.pixel.criterion == crit
    # the GAN presets start from these: same generator
    assert load_preset("srresnet").model.generator == load_preset("srgan").model.generator
    assert load_preset("rrdbnet").model.generator == load_preset("esrgan").model.generator


def test_overrides_are_validated_like_the_file():
    p = load_preset("esrgan", ["train.lr=2e-4", "model.generator.n_blocks=8", "validation.datasets=['a', 'b']"])
    assert p.train.lr == 2e-4 and p.model.generator.n_blocks == 8 and p.validation.datasets == ["a", "b"]
    with pytest.raises(UserError) as exc:
        load_preset("esrgan", ["train.lr=-1"])
    assert "presets/esrgan.toml" in str(exc.value) and "train.lr" in str(exc.value) and "greater than 0" in str(exc.value)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("train.precision=fp8", ["train.precision", "'auto', 'fp32', 'bf16' or 'fp16'", "fp8"]),
        ("model.generator.n_blockz=3", ["model.generator.n_blockz", "unknown field", "n_blocks"]),
        ("model.generator.arch=unet", ["model.generator", "allowed: srresnet, rrdbnet"]),
        ("model.generator.scale=5", ["model.generator.scale", "2, 3, 4 or 8"]),
        ("train.batch_size=many", ["train.batch_size", "valid integer", "many"]),
        ("train.hr_crop=130", ["multiple of the scale"]),
        ("loss.adversarial.kind=wgan", ["loss.adversarial.kind", "'vanilla' or 'ragan'"]),
        ("trainn.lr=1", ["trainn", "unknown field", "train"]),
    ],
)
def test_bad_values_name_field_and_allowed_values(override, expected):
    with pytest.raises(UserError) as exc:
        load_preset("esrgan", [override])
    for text in expected:
        assert text in str(exc.value)


def test_preset_file_path_and_file_errors(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text(dump_toml(load_preset("srresnet", ["name=mine", "train.batch_size=4"])))
    assert load_preset(str(good)).train.batch_size == 4
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nstage = "psnr"\n[model.generator]\narch = "srresnet"\n[loss.pixel]\ncriterion = "huber"\n')
    with pytest.raises(UserError, match=r"bad\.toml: loss\.pixel\.criterion"):
        load_preset(str(bad))
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(UserError, match="invalid TOML"):
        load_preset(str(broken))
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        load_preset("nope")
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_preset("srgan", ["train.lr"])


def test_stage_consistency():
    with pytest.raises(UserError, match="stage 'psnr' takes no discriminator"):
        load_preset("esrgan", ["stage=psnr"])


def test_dump_roundtrip_is_identical():
    import tomllib

    for name in preset_names():
        p = load_preset(name)
        from srtool.config import Preset

        assert Preset.model_validate(tomllib.loads(dump_toml(p))) == p
