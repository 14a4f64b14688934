"""Shared model zoo: parameter counts, shapes, encoder/decoder split, gradients and input sizes."""

import pytest
import torch
from torch import nn

from fusionbook.models import BasicBlock, Bottleneck, HafnerUNet, ResNetBranch, UNet, Up


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- parameter counts (the papers' models)


@pytest.mark.parametrize("c, expected", [(14, 17_273_729), (10, 17_271_425), (2, 17_266_817), (1, 17_266_241)])
def test_unet_parameter_count(c, expected):
    assert n_params(UNet(c)) == expected


def test_hafner_unet_parameter_counts():
    net = HafnerUNet(2, 1, topology=[64, 128, 256, 512])
    assert n_params(net) == 14_788_353
    assert n_params(net.downs) == 9_371_904
    assert n_params(net.ups) == 5_377_984
    # paper 5: DS U-Net (two streams + 1x1 head on 128 ch) and the proposed net with a reconstruction stream
    s1, s2, recon = HafnerUNet(2, None), HafnerUNet(4, None), HafnerUNet(2, None)
    head = nn.Conv2d(128, 1, 1)
    assert n_params(s1) + n_params(s2) + n_params(head) == 29_577_857
    assert n_params(s1) + n_params(s2) + n_params(recon) + n_params(head) == 44_366_145
    # paper 4: plain dual-stream U-Net [64, 128] with 2 + 4 inputs
    assert n_params(HafnerUNet(2, 1, (64, 128))) + n_params(HafnerUNet(4, 1, (64, 128))) == 1_868_930


@pytest.mark.parametrize("c, expected", [(2, 23_504_896), (12, 23_536_256)])
def test_resnet50_branch_parameter_count(c, expected):
    branch = ResNetBranch(c, depth=50)
    assert n_params(branch) == expected
    assert n_params(ResNetBranch(c, depth=50, stem_relu=False)) == expected


def test_two_branch_totals():
    def head(c):
        return nn.Sequential(nn.Linear(2 * c, 1000), nn.Linear(1000, 12))

    r50 = n_params(ResNetBranch(2)) + n_params(ResNetBranch(12)) + n_params(head(2048))
    r18 = n_params(ResNetBranch(2, 18)) + n_params(ResNetBranch(12, 18)) + n_params(head(512))
    assert (r50, r18) == (51_150_164, 23_415_124)


# ---------------------------------------------------------------- shapes (the papers' tensor shapes)


@pytest.fixture(scope="module")
def unet14():
    torch.manual_seed(0)
    return UNet(14)


def test_unet_shapes(unet14):
    x = torch.randn(2, 14, 64, 64)
    assert unet14(x).shape == (2, 1, 64, 64)
    assert unet14.encode(x).shape == (2, 512, 4, 4)
    assert unet14.embedding_channels == 512
    feats = unet14.features(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]


def test_unet_forward_is_decode_of_features(unet14):
    unet14.eval()
    x = torch.randn(1, 14, 32, 32)
    with torch.no_grad():
        assert torch.equal(unet14(x), unet14.decode(unet14.features(x)))
        assert torch.equal(unet14.encode(x), unet14.features(x)[-1])
    unet14.train()


def test_unet_output_activation():
    torch.manual_seed(1)
    a = UNet(2).eval()
    b = UNet(2, out_activation=None).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        raw = b(x)
        assert torch.allclose(a(x), torch.where(raw >= 0, raw, 0.01 * raw))
        assert (raw < 0).any()  # otherwise the comparison above tests nothing
    with pytest.raises(ValueError, match="out_activation"):
        UNet(2, out_activation="swish")


def test_unet_classic_transposed_variant():
    net = UNet(3, 2, bilinear=False)
    assert net.embedding_channels == 1024
    assert net.up1.up.in_channels == 1024 and net.up1.up.out_channels == 512
    x = torch.randn(1, 3, 32, 32)
    assert net(x).shape == (1, 2, 32, 32)
    assert net.encode(x).shape == (1, 1024, 2, 2)


def test_hafner_stream_and_topologies():
    stream = HafnerUNet(2, out_channels=None)
    x = torch.randn(2, 2, 32, 32)
    assert stream(x).shape == (2, 64, 32, 32) and stream.out_channels == 64 and stream.outc is None
    assert stream.encode(x).shape == (2, 512, 2, 2)
    net4 = HafnerUNet(4, 1, topology=(64, 128))
    feats = net4.features(torch.randn(1, 4, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (128, 16, 16), (128, 8, 8)]
    assert [(u.in_channels, u.out_channels) for u in net4.ups] == [(256, 64), (128, 64)]
    assert net4.decode(feats).shape == (1, 1, 32, 32)
    # transposed convolution keeps the width of the deeper map: ConvTranspose2d(in/2 -> in/2)
    assert all(u.up.in_channels == u.up.out_channels == u.in_channels // 2 for u in stream.ups)
    with pytest.raises(ValueError, match="topology"):
        HafnerUNet(2, 1, topology=())


def test_resnet_shapes():
    x = torch.randn(2, 2, 120, 120)
    with torch.no_grad():
        r50 = ResNetBranch(2).eval()
        assert r50(x).shape == (2, 2048, 4, 4) and r50.out_channels == 2048
        r18 = ResNetBranch(2, 18).eval()
        assert r18(x).shape == (2, 512, 4, 4) and r18.out_channels == 512
    assert isinstance(r50.layer1[0], Bottleneck) and isinstance(r18.layer1[0], BasicBlock)
    assert [len(getattr(r50, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert [len(getattr(r18, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    # conventional parameter names (a standard ResNet state dict without `fc` loads)
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.bn3.bias"} <= set(
        r50.state_dict()
    )


def test_resnet_stem_relu_switch():
    torch.manual_seed(0)
    with_relu = ResNetBranch(2, 18).eval()
    without = ResNetBranch(2, 18, stem_relu=False).eval()
    without.load_state_dict(with_relu.state_dict())
    x = torch.randn(1, 2, 64, 64)
    with torch.no_grad():
        assert (with_relu.stem(x) >= 0).all() and (without.stem(x) < 0).any()
        assert not torch.allclose(with_relu(x), without(x))


def test_resnet_init_and_errors():
    net = ResNetBranch(2, 50, zero_init_residual=True)
    assert all((b.bn3.weight == 0).all() for layer in (net.layer1, net.layer4) for b in layer)
    assert all((m.weight == 1).all() for m in ResNetBranch(2, 18).modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(ValueError, match="depth"):
        ResNetBranch(2, depth=42)
    with pytest.raises(ValueError, match="in_channels=2"):
        ResNetBranch(2, 18)(torch.randn(1, 12, 32, 32))


# ---------------------------------------------------------------- encode never runs the decoder


def test_unet_encode_does_not_run_decoder(monkeypatch):
    net = UNet(2)
    calls = []
    for m in (net.up1, net.up2, net.up3, net.up4, net.outc):
        m.register_forward_hook(lambda *a: calls.append(1))

    def boom(*a, **k):
        raise AssertionError("decode called")

    monkeypatch.setattr(net, "decode", boom)
    assert net.encode(torch.randn(1, 2, 32, 32)).shape == (1, 512, 2, 2)
    assert calls == []
    with pytest.raises(AssertionError, match="decode called"):
        net(torch.randn(1, 2, 32, 32))


def test_hafner_encode_does_not_run_decoder(monkeypatch):
    net = HafnerUNet(2, 1, (64, 128))
    calls = []
    for m in (*net.ups, net.outc):
        m.register_forward_hook(lambda *a: calls.append(1))
    monkeypatch.setattr(net, "decode", lambda *a: (_ for _ in ()).throw(AssertionError("decode called")))
    assert net.encode(torch.randn(1, 2, 16, 16)).shape == (1, 128, 4, 4)
    assert calls == []


def test_resnet_encode_is_the_layer4_embedding():
    torch.manual_seed(0)
    net = ResNetBranch(3, 18).eval()
    x = torch.randn(2, 3, 70, 70)  # odd sizes: ⌈70/32⌉ = 3
    with torch.no_grad():
        emb = net.encode(x)
        assert emb.shape == (2, net.out_channels, 3, 3)
        assert torch.equal(emb, net(x)) and torch.equal(emb, net.features(x)[-1])
    assert not hasattr(net, "decode")
    with pytest.raises(ValueError, match="in_channels=3"):
        net.encode(torch.randn(1, 2, 32, 32))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: UNet(14), (2, 14, 32, 32)),
        (lambda: HafnerUNet(2, None), (2, 2, 32, 32)),
        (lambda: HafnerUNet(4, 1, (64, 128)), (2, 4, 32, 32)),
        (lambda: ResNetBranch(12, 18, stem_relu=False), (2, 12, 64, 64)),
    ],
)
def test_gradients_reach_every_parameter(make, shape):
    torch.manual_seed(0)
    net = make()
    x = torch.randn(*shape, requires_grad=True)
    net(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert sum(p.grad.abs().sum() for p in net.parameters()) > 0


def test_embedding_gradient_reaches_input_but_not_decoder():
    net = UNet(2)
    x = torch.randn(1, 2, 32, 32, requires_grad=True)
    net.encode(x).norm().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.up1.parameters())


# ---------------------------------------------------------------- input sizes


@pytest.mark.parametrize("h, w", [(16, 16), (17, 31), (37, 45), (50, 64)])
def test_unet_odd_sizes_are_padded(h, w):
    net = UNet(2).eval()
    with torch.no_grad():
        x = torch.randn(1, 2, h, w)
        assert net(x).shape == (1, 1, h, w)
        assert net.encode(x).shape == (1, 512, h // 16, w // 16)
        assert HafnerUNet(2, 1, (64, 128)).eval()(x).shape == (1, 1, h, w)


@pytest.mark.parametrize("shape, match", [((1, 2, 8, 32), "too small"), ((1, 3, 32, 32), "in_channels=2"),
                                          ((2, 32, 32), r"\(B, C, H, W\)")])
def test_unet_bad_input_raises(shape, match):
    with pytest.raises(ValueError, match=match):
        UNet(2)(torch.randn(*shape))


def test_hafner_minimum_size_follows_depth():
    net = HafnerUNet(2, 1, (64, 128))  # depth 2: inputs down to 4x4
    assert net.eval()(torch.randn(1, 2, 5, 4)).shape == (1, 1, 5, 4)
    with pytest.raises(ValueError, match="≥ 4"):
        net(torch.randn(1, 2, 3, 8))


def test_decode_checks_number_of_levels():
    with pytest.raises(ValueError, match="5 encoder levels"):
        UNet(2).decode([torch.zeros(1, 512, 2, 2)])
    with pytest.raises(ValueError, match="3 encoder levels"):
        HafnerUNet(2, 1, (64, 128)).decode([torch.zeros(1, 128, 2, 2)])


def test_up_block_modes():
    skip, deep = torch.randn(1, 8, 9, 11), torch.randn(1, 8, 4, 5)
    assert Up(16, 4, "transpose")(deep, skip).shape == (1, 4, 9, 11)
    assert Up(16, 4, "bilinear")(deep, skip).shape == (1, 4, 9, 11)
    with pytest.raises(ValueError, match="mode"):
        Up(16, 4, "nearest")


def test_channels_last_autocast_forward():
    net = UNet(2).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 2, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.shape == (1, 1, 32, 32) and torch.isfinite(y.float()).all()
