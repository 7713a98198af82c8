"""ESRGAN details from the bit-level comparison with BasicSR: the dense blocks' 0.1-scaled Kaiming
initialisation, and ESRGAN's official 128x128 VGG-style discriminator as a selectable architecture."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from srtool.config import load_preset
from srtool.errors import UserError
from srtool.models import RRDBNet, RRDBNetConfig, build_network
from srtool.models.vgg_style import VGGStyle128Config, VGGStyleDiscriminator128


def test_dense_block_convs_use_esrgans_scaled_kaiming_init_bit_for_bit():
    """The recipe of BasicSR's ResidualDenseBlockOut: five default convs, then kaiming_normal_ * 0.1, bias 0."""
    torch.manual_seed(7)
    net = RRDBNet(RRDBNetConfig(n_blocks=2))
    torch.manual_seed(7)
    head = nn.Conv2d(3, 64, 3, padding=1)  # conv_first draws first, with PyTorch's default
    reference = [nn.Conv2d(64 + 32 * i, 32 if i < 4 else 64, 3, padding=1) for i in range(5)]
    for conv in reference:
        nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
        conv.weight.data *= 0.1
        conv.bias.data.fill_(0)
    assert torch.equal(net.conv_first.weight, head.weight)
    rdb = net.body[0].rdb1
    for i, ref in enumerate(reference, start=1):
        assert torch.equal(getattr(rdb, f"conv{i}").weight, ref.weight)
        assert torch.equal(getattr(rdb, f"conv{i}").bias, ref.bias)


def test_per_layer_std_follows_the_recipe():
    torch.manual_seed(0)
    net = RRDBNet(RRDBNetConfig(n_blocks=3))
    for name, conv in net.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        fan_in = conv.in_channels * 9
        if ".rdb" in name:
            expected = 0.1 * math.sqrt(2.0 / fan_in)
            assert float(conv.bias.detach().abs().max()) == 0.0, name
        else:  # conv_first, conv_body, upsampling, conv_hr, conv_last: PyTorch's kaiming_uniform(a=sqrt(5))
            expected = 1.0 / math.sqrt(3 * fan_in)
        std = float(conv.weight.detach().std())
        assert std == pytest.approx(expected, rel=0.08), (name, std, expected)


class BasicSRVGGStyle128(nn.Module):
    """The layout of BasicSR's VGGStyleDiscriminator(num_in_ch=3, num_feat=64, input_size=128), written out."""

    def __init__(self, f: int = 64):
        super().__init__()
        spec = [(3, f, 3, 1), (f, f, 4, 2), (f, 2 * f, 3, 1), (2 * f, 2 * f, 4, 2), (2 * f, 4 * f, 3, 1),
                (4 * f, 4 * f, 4, 2), (4 * f, 8 * f, 3, 1), (8 * f, 8 * f, 4, 2), (8 * f, 8 * f, 3, 1), (8 * f, 8 * f, 4, 2)]
        self.names = []
        for i, (cin, cout, k, s) in enumerate(spec):
            name = f"{i // 2}_{i % 2}"
            setattr(self, f"conv{name}", nn.Conv2d(cin, cout, k, s, 1, bias=i == 0))
            if i:
                setattr(self, f"bn{name}", nn.BatchNorm2d(cout))
            self.names.append(name)
        self.linear1 = nn.Linear(8 * f * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)

    def forward(self, x):
        lrelu = lambda t: nn.functional.leaky_relu(t, 0.2)  # noqa: E731
        feat = lrelu(self.conv0_0(x))
        for name in self.names[1:]:
            feat = lrelu(getattr(self, f"bn{name}")(getattr(self, f"conv{name}")(feat)))
        return self.linear2(lrelu(self.linear1(feat.view(feat.size(0), -1))))


def test_vgg_style_128_is_esrgans_discriminator():
    net = build_network(VGGStyle128Config())
    assert isinstance(net, VGGStyleDiscriminator128)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10 and [c.kernel_size for c in convs[1::2]] == [(4, 4)] * 5
    assert all(c.stride == (2, 2) for c in convs[1::2]) and net.linear1.in_features == 8192
    assert (net.linear1.out_features, net.linear2.out_features) == (100, 1)
    reference = BasicSRVGGStyle128()
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    net.load_state_dict(reference.state_dict())  # BasicSR net_d weights load as they are
    x = torch.rand(2, 3, 128, 128)
    net.train(), reference.train()
    assert torch.equal(net(x), reference(x))
    with pytest.raises(ValueError, match="128x128"):
        net(torch.rand(1, 3, 96, 96))


def test_esrgan_preset_keeps_the_study_discriminator_and_offers_the_official_one():
    assert load_preset("esrgan").model.discriminator.arch == "vgg_discriminator"
    p = load_preset("esrgan", ["model.discriminator.arch=vgg_style_128"])
    assert p.model.discriminator == VGGStyle128Config()
    with pytest.raises(UserError, match="hr_crop .192. must be 128"):
        load_preset("esrgan", ["model.discriminator.arch=vgg_style_128", "train.hr_crop=192"])
    with pytest.raises(UserError, match="model.discriminator: unknown architecture; allowed: vgg_discriminator, vgg_style_128"):
        load_preset("esrgan", ["model.discriminator.arch=patchgan"])


@pytest.mark.slow
def test_esrgan_trains_with_the_official_discriminator(shared_data, tmp_path):
    """One RaGAN iteration on real T91 crops with --set model.discriminator.arch=vgg_style_128."""
    from srtool.models.vgg import vgg19_features
    from srtool.prepare import prepare_folder
    from srtool.train import TrainOptions, train

    src = tmp_path / "src"
    src.mkdir()
    for image in sorted((shared_data / "train" / "T91").glob("*.png"))[:4]:
        (src / image.name).symlink_to(image)
    data = prepare_folder([src], tmp_path / "prepared", scale=4, workers=1, progress=False)
    torch.manual_seed(1)
    vgg = tmp_path / "vgg19-random.pth"  # random weights of the true VGG19 layout (no ImageNet download here)
    torch.save({f"features.{k}": v for k, v in vgg19_features().state_dict().items()}, vgg)
    overrides = ["model.generator.n_blocks=1", "model.generator.n_feats=8", "model.generator.growth=4",
                 "model.discriminator.arch=vgg_style_128", "model.discriminator.base_channels=8",
                 "train.batch_size=1", "train.num_workers=0", "validation.datasets=[]", "train.epochs=1",
                 "train.iters_per_epoch=1", "checkpoint.every=1"]
    result = train(TrainOptions(preset="esrgan", data=[data], out=tmp_path / "run", overrides=overrides,
                                vgg_weights=str(vgg), progress=False))
    assert result.iteration == 1 and set(result.exports) == {"best", "last"}
    from srtool.train.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "iter_00000001.pt")
    assert "conv4_1.weight" in state["discriminator"] and state["discriminator"]["linear1.weight"].shape == (100, 1024)
