"""Model core: shapes at every scale, the papers' parameter counts, and the study's snippet bugs."""

from __future__ import annotations

import pytest
import torch

from srtool.models import (
    DiscriminatorConfig, RRDBNet, RRDBNetConfig, SRResNet, SRResNetConfig, VGGDiscriminator,
    VGGFeatureExtractor, build_network, upsampling_factors,
)
from srtool.models.vgg import vgg19_features, vgg19_layer_index
from srtool.errors import UserError


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("arch", ["srresnet", "rrdbnet"])
def test_output_shape_every_scale(arch, scale):
    config = (SRResNetConfig if arch == "srresnet" else RRDBNetConfig)(scale=scale, n_blocks=1, n_feats=16)
    net = build_network(config).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 7, 5))
    assert out.shape == (2, 3, 7 * scale, 5 * scale)


@pytest.mark.parametrize("scale,factors", [(2, [2]), (3, [3]), (4, [2, 2]), (8, [2, 2, 2])])
def test_upsampling_stages(scale, factors):
    # the study used int(math.log(scale)) stages (1 for x4) and int(scale ** 0.5) per stage (wrong for 3, 8)
    assert upsampling_factors(scale) == factors


def test_rrdbnet23_matches_official_esrgan_parameter_count():
    assert n_params(RRDBNet(RRDBNetConfig())) == 16_697_987


def test_srresnet16_parameter_counts():
    # Without the BN that closes the trunk: the count of common ports (and of the issue).
    assert n_params(SRResNet(SRResNetConfig(n_blocks=16, trunk_batch_norm=False))) == 1_549_334
    # The SRGAN paper's figure 4 has that BN too: 64 gammas + 64 betas more.
    assert n_params(SRResNet(SRResNetConfig(n_blocks=16))) == 1_549_334 + 128


def test_srresnet_has_bn_and_one_parameter_prelu():
    net = SRResNet(SRResNetConfig(n_blocks=2))
    prelus = [m for m in net.modules() if isinstance(m, torch.nn.PReLU)]
    assert prelus and all(p.weight.numel() == 1 for p in prelus)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_rrdb_blocks_are_distinct_and_trunk_is_added():
    net = RRDBNet(RRDBNetConfig(n_blocks=1, n_feats=8, growth=4)).eval()
    rrdb = net.body[0]
    assert rrdb.rdb1 is not rrdb.rdb2 and rrdb.rdb1.conv1.weight is not rrdb.rdb2.conv1.weight
    # zero trunk => output depends on the head only through an *addition* (x + 0), not a product (x * 0)
    torch.nn.init.zeros_(net.conv_body.weight)
    torch.nn.init.zeros_(net.conv_body.bias)
    feat = net.conv_first(torch.rand(1, 3, 4, 4))
    trunk = net.conv_body(net.body(feat))
    assert torch.count_nonzero(trunk) == 0 and torch.count_nonzero(feat + trunk) > 0


def test_rrdbnet_uses_basicsr_key_names():
    keys = set(RRDBNet(RRDBNetConfig(n_blocks=1)).state_dict())
    assert {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_up1.weight",
            "conv_up2.weight", "conv_hr.weight", "conv_last.weight"} <= keys


@pytest.mark.parametrize("size", [(128, 128), (96, 160), (200, 131)])
def test_discriminator_takes_any_size_at_least_the_crop(size):
    disc = VGGDiscriminator(DiscriminatorConfig()).eval()
    with torch.no_grad():
        assert disc(torch.rand(2, 3, *size)).shape == (2, 1)
    chans = [m.out_channels for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    strides = [m.stride[0] for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert chans == [64, 64, 128, 128, 256, 256, 512, 512]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 2]
    bns = [m for m in disc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 7  # all blocks but the first


def test_vgg19_features_match_torchvision_layout():
    torchvision = pytest.importorskip("torchvision")
    ours = vgg19_features().state_dict()
    theirs = torchvision.models.vgg19().features.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    layer = torchvision.models.vgg19().features[vgg19_layer_index("conv5_4", True)]
    assert isinstance(layer, torch.nn.Conv2d) and layer.in_channels == 512


def test_vgg_feature_extractor_before_and_after_activation():
    x = torch.rand(1, 3, 32, 32)
    before = VGGFeatureExtractor("conv5_4", before_activation=True, weights="random")
    after = VGGFeatureExtractor("conv5_4", before_activation=False, weights="random")
    after.load_state_dict(before.state_dict())
    fb, fa = before(x), after(x)
    assert fb.shape == fa.shape == (1, 512, 2, 2)
    assert torch.allclose(torch.relu(fb), fa)
    assert not any(p.requires_grad for p in before.parameters())


def test_vgg_weights_from_local_file(tmp_path):
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg19_features().state_dict().items()}
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    ext = VGGFeatureExtractor("conv2_2", weights=path)
    assert torch.equal(ext.features[0].weight, state["features.0.weight"])


def test_vgg_bad_file_and_bad_layer_are_user_errors(tmp_path):
    path = tmp_path / "notvgg.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="not a VGG19 state dict"):
        VGGFeatureExtractor(weights=path)
    with pytest.raises(UserError, match="unknown VGG19 layer"):
        VGGFeatureExtractor("conv6_1", weights="random")


def test_vgg_offline_without_file_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty cache

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="--vgg-weights"):
        VGGFeatureExtractor(weights="imagenet")
