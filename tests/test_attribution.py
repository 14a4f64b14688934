"""Tests of fusionbook.attribution: occluders, MODO passes, embedding distance, output occlusion."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from fusionbook.attribution import (
    GAUSSIAN,
    OCCLUDERS,
    ZEROS,
    ConstantFill,
    MeanFill,
    ModalityOccluder,
    as_occluder,
    dataset_influence,
    embedding_distance,
    embedding_l2,
    mean_influence,
    modality_occlusion_passes,
    occlude,
    occluded_chunks,
    output_occlusion,
)
from fusionbook.modality import BIGEARTHNET, MAPINWILD, PAPER1_GROUPS, PAPER2_GROUPS
from fusionbook.models import HafnerUNet, ResNetBranch, UNet

LAYOUT = MAPINWILD.layout()
GROUPS4 = ["s2", "s1", "worldcover", "viirs"]
STRATEGIES = ["zeros", "ones", "uniform", "gaussian"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class CountingEncoderDecoder(nn.Module):
    """Toy U-Net-like model with ``features``/``encode``/``decode`` that counts encoder and decoder calls.

    (B, 14, H, W) -> embedding (B, 6, H/2, W/2) -> output (B, 1, H, W)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc1 = nn.Conv2d(14, 6, 3, padding=1)
        self.enc2 = nn.Conv2d(6, 6, 3, padding=1)
        self.dec = nn.Conv2d(12, 1, 1)
        self.encoder_batches: list[int] = []
        self.decoder_calls = 0

    def features(self, x):
        self.encoder_batches.append(x.shape[0])
        f1 = torch.tanh(self.enc1(x))
        return [f1, torch.tanh(self.enc2(nn.functional.max_pool2d(f1, 2)))]

    def encode(self, x):
        return self.features(x)[-1]

    def decode(self, feats):
        self.decoder_calls += 1
        f1, f2 = feats
        return self.dec(torch.cat([f1, nn.functional.interpolate(f2, scale_factor=2)], 1))

    def forward(self, x):
        return self.decode(self.features(x))


class EncodeOnly(nn.Module):
    """Model with ``encode`` and ``forward`` only: (B, 14, H, W) -> (B, 4, H, W) / (B, 1, H, W)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(14, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 1, 1)

    def encode(self, x):
        return torch.relu(self.conv(x))

    def forward(self, x):
        return self.head(self.encode(x))


def naive_distances(model, x, groups, fill="zeros", generator=None):
    """Reference: the loop of the authors — one pass per occluded input, compared one group at a time."""
    e0 = model.encode(x)
    cols = []
    for g in groups:
        e = model.encode(occlude(x, LAYOUT.indices(g), fill, generator))
        cols.append(torch.stack([torch.norm(e0[b] - e[b], p=2) for b in range(x.shape[0])]))
    return torch.stack(cols, 1)


# --- toy checks of the specification ------------------------------------------------------------


@pytest.mark.parametrize("shape,expected", [((1, 512, 16, 16), 362.0387), ((1, 512, 8, 8), 181.0193)])
def test_embedding_l2_all_ones(shape, expected):
    d = embedding_l2(torch.ones(shape), torch.zeros(shape))
    assert d.shape == (1,) and math.isclose(d.item(), expected, abs_tol=1e-4)
    assert math.isclose(d.item(), math.sqrt(math.prod(shape)), rel_tol=1e-6)


def test_embedding_l2_is_per_sample():
    a = torch.zeros(3, 512, 16, 16)
    b = torch.ones(3, 512, 16, 16) * torch.tensor([1.0, 2.0, 0.0]).view(3, 1, 1, 1)
    d = embedding_l2(a, b)
    assert d.shape == (3,)
    assert torch.allclose(d, torch.tensor([362.0387, 724.0773, 0.0]), atol=1e-3)
    with pytest.raises(ValueError, match="same shape"):
        embedding_l2(a, b[:2])


@pytest.mark.parametrize("fill", STRATEGIES + ["mean", 3.5])
@pytest.mark.parametrize("group", PAPER1_GROUPS + ("all",))
def test_occlusion_changes_only_the_group(fill, group):
    x = torch.rand(4, 14, 6, 6) + 10.0  # no strategy produces values ≥ 10 (gaussian: P < 1e-20)
    x_before = x.clone()
    if fill == "mean":
        fill = MeanFill(-torch.arange(14.0))
    xo = ModalityOccluder(LAYOUT, fill)(x, group, gen())
    inside = LAYOUT.mask(group)
    assert torch.equal(x, x_before)  # no in-place change
    assert xo.shape == x.shape and xo.dtype == x.dtype
    assert torch.equal(xo[:, ~inside], x[:, ~inside])
    assert (xo[:, inside] != x[:, inside]).all()  # every pixel of every sample in the group changed


def test_all_group_has_14_channels():
    assert len(LAYOUT.indices("all")) == 14
    assert (occlude(torch.rand(2, 14, 4, 4), LAYOUT.mask("all"), "ones") == 1).all()


def test_fill_values():
    x = torch.rand(64, 14, 16, 16)
    assert (occlude(x, [3], "zeros")[:, 3] == 0).all()
    assert (occlude(x, [3], "ones")[:, 3] == 1).all()
    assert (occlude(x, [3], -2)[:, 3] == -2).all()
    u = occlude(x, [3], "uniform", gen())[:, 3]
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    n = occlude(x, [3], "gaussian", gen())[:, 3]
    assert abs(n.mean().item()) < 0.02 and abs(n.std().item() - 1) < 0.02 and n.min() < 0
    m = occlude(x, [2, 5], MeanFill(torch.arange(14.0)))
    assert (m[:, 2] == 2).all() and (m[:, 5] == 5).all()
    # paper-code names are accepted as aliases
    assert as_occluder("zero") is ZEROS and as_occluder("random") is OCCLUDERS["uniform"]
    assert as_occluder("gaussian") is GAUSSIAN and isinstance(as_occluder(0), ConstantFill)


def test_random_fills_are_seeded_and_independent_per_element():
    x = torch.zeros(2, 14, 8, 8)
    a = occlude(x, [0, 1], "gaussian", gen(3))
    assert torch.equal(a, occlude(x, [0, 1], "gaussian", gen(3)))
    assert not torch.equal(a, occlude(x, [0, 1], "gaussian", gen(4)))
    assert not torch.equal(a[0, 0], a[1, 0]) and not torch.equal(a[0, 0], a[0, 1])


def test_channels_as_list_or_mask_and_bad_input():
    x = torch.rand(2, 14, 4, 4)
    assert torch.equal(occlude(x, [10, 11]), occlude(x, LAYOUT.mask("s1")))
    with pytest.raises(IndexError, match="out of range"):
        occlude(x, [14])
    with pytest.raises(ValueError, match="boolean mask"):
        occlude(x, torch.ones(13, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        occlude(x, [])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        occlude(x[0], [1])
    with pytest.raises(ValueError, match="unknown fill"):
        occlude(x, [1], "pink")
    with pytest.raises(ValueError, match="MeanFill"):
        occlude(x, [1], "mean")
    with pytest.raises(ValueError, match="3 values"):
        occlude(x, [1], MeanFill([0.0, 1.0, 2.0]))
    with pytest.raises(KeyError, match="valid groups"):
        ModalityOccluder(LAYOUT)(x, "s3")
    with pytest.raises(ValueError, match="stacks 14"):
        ModalityOccluder(LAYOUT)(torch.rand(2, 12, 4, 4), "s1")


def test_modality_occlusion_passes_paper1_semantics():
    """MODO occludes all bands of a group for every sample (not only item 0 / the first band)."""
    x = torch.rand(3, 14, 4, 4) + 1
    passes = list(modality_occlusion_passes(x, LAYOUT, PAPER1_GROUPS))
    assert len(passes) == len(PAPER1_GROUPS) == 6
    for g, xo in zip(PAPER1_GROUPS, passes):
        zeroed = (xo == 0).flatten(2).all(-1)  # (B, C)
        assert torch.equal(zeroed, LAYOUT.mask(g).expand(3, 14))
    # S1-first layout of paper 1's code: the same groups, other indices
    lay1 = MAPINWILD.layout(("s1", "s2", "worldcover", "viirs"))
    xo = next(modality_occlusion_passes(x, lay1, ["s2_rgbnir"]))
    assert (xo[:, [4, 3, 2, 8]] == 0).all() and (xo[:, [0, 1, 5, 6, 7, 9]] != 0).all()
    with pytest.raises(TypeError, match="sequence of group names"):
        list(modality_occlusion_passes(x, LAYOUT, "s1"))


# --- embedding distance -------------------------------------------------------------------------


@pytest.mark.parametrize("fill", STRATEGIES)
def test_embedding_distance_matches_naive_loop(fill):
    model = CountingEncoderDecoder().eval()
    x = torch.randn(3, 14, 8, 8)
    with torch.inference_mode():
        d = embedding_distance(model, x, LAYOUT, PAPER2_GROUPS, fill, generator=gen(5))
        ref = naive_distances(model, x, PAPER2_GROUPS, fill, gen(5))
    assert d.shape == (3, 5)
    assert torch.allclose(d, ref, rtol=1e-5, atol=1e-5)


def test_embedding_distance_batch_gives_vector_per_sample():
    model = EncodeOnly().eval()
    x = torch.randn(4, 14, 8, 8)
    d = embedding_distance(model, x, LAYOUT, ["s1"])
    assert d.shape == (4, 1)
    single = torch.cat([embedding_distance(model, x[b : b + 1], LAYOUT, ["s1"]) for b in range(4)])
    assert torch.allclose(d, single, atol=1e-5)
    assert len(set(d.flatten().tolist())) == 4  # not a broadcast batch mean


def test_embedding_distance_cost_encoder_only_and_batched():
    model = CountingEncoderDecoder().eval()
    x = torch.randn(2, 14, 8, 8)
    with torch.inference_mode():
        embedding_distance(model, x, LAYOUT, GROUPS4)
        assert model.encoder_batches == [2, 8] and model.decoder_calls == 0  # clean once + one N·B pass
        model.encoder_batches.clear()
        d1, y = embedding_distance(model, x, LAYOUT, GROUPS4, return_output=True)
        assert model.encoder_batches == [2, 8] and model.decoder_calls == 1  # decoder on the clean features only
        assert torch.allclose(y, model(x), atol=1e-6)
        model.encoder_batches.clear()
        d3 = embedding_distance(model, x, LAYOUT, GROUPS4, chunk_size=3)
        assert model.encoder_batches == [2, 3, 3, 2]
        assert torch.allclose(d1, d3, atol=1e-6)


def test_embedding_distance_chunking_keeps_random_draws():
    model = EncodeOnly().eval()
    x = torch.randn(3, 14, 8, 8)
    with torch.inference_mode():
        full = embedding_distance(model, x, LAYOUT, PAPER2_GROUPS, "uniform", generator=gen(9))
        for c in (1, 2, 4, 7, 100):
            chunked = embedding_distance(model, x, LAYOUT, PAPER2_GROUPS, "uniform", generator=gen(9), chunk_size=c)
            assert torch.allclose(full, chunked, atol=1e-5)


def test_occluded_chunks_rows():
    x = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 14, 2, 2).contiguous() + 1
    rows = list(occluded_chunks(x, LAYOUT, ["s1", "viirs", "all"], chunk_size=4))
    assert [len(r[0]) for r in rows] == [4, 2]
    xo = torch.cat([r[0] for r in rows])
    gid = torch.cat([r[1] for r in rows])
    sid = torch.cat([r[2] for r in rows])
    assert gid.tolist() == [0, 0, 1, 1, 2, 2] and sid.tolist() == [0, 1, 0, 1, 0, 1]
    for k, g in enumerate(["s1", "viirs", "all"]):
        for b in range(2):
            assert torch.equal(xo[2 * k + b], occlude(x, LAYOUT.indices(g))[b])
    with pytest.raises(ValueError, match="chunk_size"):
        next(occluded_chunks(x, LAYOUT, ["s1"], chunk_size=0))


def test_embedding_distance_return_output_for_encode_only_model():
    model = EncodeOnly().eval()
    x = torch.randn(2, 14, 8, 8)
    d, y = embedding_distance(model, x, LAYOUT, GROUPS4, return_output=True)
    assert d.shape == (2, 4) and torch.allclose(y, model(x))


def test_embedding_distance_errors_and_training_warning():
    x = torch.randn(2, 14, 8, 8)
    with pytest.raises(TypeError, match="encode"):
        embedding_distance(nn.Conv2d(14, 2, 1), x, LAYOUT, ["s1"])
    with pytest.raises(ValueError, match="duplicates"):
        embedding_distance(EncodeOnly(), x, LAYOUT, ["s1", "s1"])
    with pytest.raises(ValueError, match="channels"):
        embedding_distance(EncodeOnly(), x[:, :12], LAYOUT, ["s1"])
    bn = nn.Sequential(nn.Conv2d(14, 2, 1), nn.BatchNorm2d(2))
    bn.encode = bn.forward
    with pytest.warns(UserWarning, match="eval"):
        embedding_distance(bn.train(), x, LAYOUT, ["s1"])


def test_embedding_distance_is_differentiable():
    """The optional train-time variant of paper 2 back-propagates through the distances."""
    model = EncodeOnly()
    x = torch.randn(2, 14, 8, 8)
    d = embedding_distance(model, x, LAYOUT, GROUPS4)
    d.mean().backward()
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0


def test_real_unet_embedding_distance():
    from fusionbook.models.unet import UNet

    torch.manual_seed(0)
    unet = UNet(14, 1).eval()
    x = torch.randn(2, 14, 32, 32)
    with torch.inference_mode():
        d, y = embedding_distance(unet, x, LAYOUT, PAPER2_GROUPS, "gaussian", generator=gen(2), return_output=True)
        ref = naive_distances(unet, x, PAPER2_GROUPS, "gaussian", gen(2))
        y_ref = unet(x)
    assert d.shape == (2, 5) and (d > 0).all()
    assert torch.allclose(d, ref, rtol=1e-4, atol=1e-4)
    assert torch.allclose(y, y_ref, atol=1e-5)


@pytest.mark.parametrize(
    "name, build, layout, groups, size",
    [
        ("UNet", lambda: UNet(14, 1, base_channels=8), LAYOUT, PAPER2_GROUPS, 32),
        ("HafnerUNet", lambda: HafnerUNet(14, 1, topology=(16, 32)), LAYOUT, PAPER2_GROUPS, 16),
        ("ResNetBranch", lambda: ResNetBranch(14, depth=18), BIGEARTHNET.layout(), ["s1", "s2", "all"], 64),
    ],
)
def test_embedding_distance_is_model_agnostic(name, build, layout, groups, size):
    """Any model with ``encode`` works; the occluded copies never reach a decoder."""
    torch.manual_seed(0)
    model = build().eval()
    decoder_calls = []
    decoder = [m for n, m in model.named_modules() if n.split(".")[0] in ("up1", "up2", "up3", "up4", "ups", "outc")]
    assert bool(decoder) == hasattr(model, "decode")  # the U-Nets have a decoder, the ResNet branch has none
    for m in decoder:
        m.register_forward_hook(lambda *_: decoder_calls.append(1))
    if hasattr(model, "decode"):
        model.decode = lambda feats: decoder_calls.append(1)  # shadows the method on this instance only
    x = torch.randn(3, 14, size, size)
    with torch.inference_mode():
        d = embedding_distance(model, x, layout, groups, "gaussian", generator=gen(1))
        emb = model.encode(x)
    assert d.shape == (3, len(groups)) and d.dtype == emb.dtype
    assert torch.isfinite(d).all() and (d >= 0).all() and (d[:, -1] > 0).all()  # occluding everything moves it
    assert decoder_calls == []
    if decoder:  # the hooks are live: the real decoder on the clean features is seen
        with torch.inference_mode():
            type(model).decode(model, model.features(x))
        assert decoder_calls
    if name == "ResNetBranch":
        assert emb.shape == (3, 512, size // 32, size // 32)


# --- dataset influence --------------------------------------------------------------------------


def test_dataset_influence_table_and_mean():
    model = CountingEncoderDecoder().train()
    x = torch.randn(5, 14, 8, 8)
    loader = [
        {"image": x[:3], "id": torch.tensor([372358, 19442, 900000093])},
        {"image": x[3:], "id": torch.tensor([7, 8])},
    ]
    df = dataset_influence(model, loader, LAYOUT, PAPER2_GROUPS, "zeros", "cpu", progress=False)
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["id", *PAPER2_GROUPS]
    assert df["id"].tolist() == [372358, 19442, 900000093, 7, 8]
    assert model.training  # mode restored
    with torch.inference_mode():
        ref = embedding_distance(model.eval(), x, LAYOUT, PAPER2_GROUPS)
    assert torch.allclose(torch.tensor(df[list(PAPER2_GROUPS)].values, dtype=torch.float32), ref, atol=1e-5)
    m = mean_influence(df)
    assert list(m.index) == list(PAPER2_GROUPS)
    assert torch.allclose(torch.tensor(m.values, dtype=torch.float32), ref.mean(0), atol=1e-5)
    assert df.attrs["fill"] == "zeros"


def test_dataset_influence_tuple_batches_and_bad_batches():
    model = EncodeOnly()
    x = torch.randn(4, 14, 8, 8)
    df = dataset_influence(model, [(x[:2], torch.zeros(2)), (x[2:], torch.zeros(2))], LAYOUT, ["s1"], progress=False)
    assert df["id"].tolist() == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="image_key"):
        dataset_influence(model, [{"x": x}], LAYOUT, ["s1"], progress=False)
    with pytest.raises(ValueError, match="ids"):
        dataset_influence(model, [{"image": x, "id": [1, 2]}], LAYOUT, ["s1"], progress=False)


# --- output occlusion and captum ----------------------------------------------------------------


def test_output_occlusion_agrees_with_captum_feature_ablation():
    from captum.attr import FeatureAblation

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(14, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1)).eval()
    x = torch.randn(4, 14, 12, 12)
    fm = LAYOUT.feature_mask(GROUPS4).view(1, 14, 1, 1).expand_as(x)
    with torch.no_grad():
        attr = FeatureAblation(lambda z: net(z).mean((1, 2, 3))).attribute(x, baselines=0.0, feature_mask=fm)
        ours = output_occlusion(net, x, LAYOUT, GROUPS4, "zeros")
    assert ours.shape == (4, 4)
    for k, g in enumerate(GROUPS4):
        idx = LAYOUT.indices(g)
        assert torch.allclose(attr[:, idx], ours[:, k].view(4, 1, 1, 1).expand(4, len(idx), 12, 12), atol=1e-6)


def test_output_occlusion_reductions_and_chunks():
    model = CountingEncoderDecoder().eval()
    x = torch.randn(2, 14, 8, 8)
    with torch.inference_mode():
        y0 = model(x)
        yo = model(occlude(x, LAYOUT.indices("s2")))
        diff = y0 - yo
        for reduce, ref in [("mean", diff.mean((1, 2, 3))), ("sum", diff.sum((1, 2, 3))),
                            ("abs_mean", diff.abs().mean((1, 2, 3))), ("l2", diff.flatten(1).norm(dim=1)),
                            (lambda t: t.amax((1, 2, 3)), diff.amax((1, 2, 3)))]:
            a = output_occlusion(model, x, LAYOUT, ["s2", "s1"], reduce=reduce, chunk_size=3)
            assert a.shape == (2, 2) and torch.allclose(a[:, 0], ref, atol=1e-5)
        with pytest.raises(ValueError, match="reduce"):
            output_occlusion(model, x, LAYOUT, ["s2"], reduce="median")


def test_embedding_l2_half_precision_does_not_overflow():
    a = torch.full((2, 512, 16, 16), 3.0, dtype=torch.float16)
    d = embedding_l2(a, torch.zeros_like(a))
    assert torch.isfinite(d).all() and torch.allclose(d, torch.full((2,), 3 * 362.0387), rtol=1e-4)
