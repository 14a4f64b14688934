"""Tests of fusionbook.attribution.shapley: exact modality Shapley values, their axioms and captum's exact values."""

from __future__ import annotations

import itertools
import math
import warnings

import pandas as pd
import pytest
import torch
from captum.attr import ShapleyValues
from torch import nn

from fusionbook.attribution import MeanFill, output_occlusion
from fusionbook.attribution.shapley import (
    SHAPLEY_MAX_GROUPS,
    check_disjoint,
    coalition_chunks,
    coalition_values,
    coalitions,
    dataset_shapley,
    modality_shapley,
    shapley_from_values,
    shapley_weights,
)
from fusionbook.modality import BIGEARTHNET, MAPINWILD, PAPER1_GROUPS, DatasetModalities, Modality
from fusionbook.models import DualStreamUNetMMTM, MultishotFusionNet, UNet
from fusionbook.models.mmtm import paper4_layout

LAYOUT = MAPINWILD.layout()
GROUPS4 = ["s2", "s1", "worldcover", "viirs"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_unet(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return UNet(14, 1, base_channels=4).eval().to(dtype)


def six_group_layout(n: int = 6):
    "A toy layout with ``n`` single-modality groups of 1–2 channels each."
    mods = {f"m{k}": Modality(f"m{k}", tuple(f"b{j}" for j in range(1 + k % 2))) for k in range(n)}
    return DatasetModalities("toy", mods, default_order=tuple(mods)).layout(), list(mods)


def permutation_shapley(v: torch.Tensor, n: int) -> torch.Tensor:
    "Reference: average marginal contribution over all n! orders, coalition values v (B, 2^n) -> (B, n)."
    phi = torch.zeros(v.shape[0], n, dtype=torch.float64)
    for order in itertools.permutations(range(n)):
        s = 0
        for i in order:
            phi[:, i] += v[:, s | (1 << i)] - v[:, s]
            s |= 1 << i
    return phi / math.factorial(n)


def captum_shapley(forward, x, layout, groups, baselines, target=None) -> torch.Tensor:
    "captum's exact ShapleyValues with the layout's modality feature mask, one value per group: (B, N)."
    mask = layout.feature_mask(groups)[None, :, None, None]
    with torch.no_grad():
        attr = ShapleyValues(forward).attribute(x, baselines=baselines, feature_mask=mask, target=target)
    return attr[:, [layout.indices(g)[0] for g in groups], 0, 0].to(torch.float64)


# --- weights and coalitions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, SHAPLEY_MAX_GROUPS + 1))
def test_weights_equal_the_average_over_all_orders(n):
    v = torch.randn(3, 2**n, dtype=torch.float64, generator=gen(n))
    torch.testing.assert_close(shapley_from_values(v), permutation_shapley(v, n), rtol=0, atol=1e-12)


def test_weight_matrix_entries():
    W = shapley_weights(3)
    # coalition {0} = 0b001: player 0 joined the empty set (weight 0!2!/3! = 1/3); players 1, 2 see S = {0}
    torch.testing.assert_close(W[1], torch.tensor([1 / 3, -1 / 6, -1 / 6], dtype=torch.float64))
    torch.testing.assert_close(W[7], torch.tensor([1 / 3, 1 / 3, 1 / 3], dtype=torch.float64))
    assert coalitions(3).sum().item() == 3 * 4  # every player is in half of the 8 coalitions


def test_too_many_groups_refused():
    layout, groups = six_group_layout(7)
    x = torch.rand(1, layout.n_channels, 4, 4)
    with pytest.raises(ValueError, match="at most 6 groups"):
        modality_shapley(lambda t: t, x, layout, groups)


def test_overlapping_groups_refused_by_name():
    x = torch.rand(1, 14, 16, 16)
    with pytest.raises(ValueError, match=r"'s2_rgb' and 's2_rgbnir' share .*'s2_rgbnir' and 's2' share"):
        modality_shapley(small_unet(), x.double(), LAYOUT, PAPER1_GROUPS)
    with pytest.raises(ValueError, match="'s2' and 'all' share"):
        check_disjoint(LAYOUT, ["s2", "all"])


# --- the axioms -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fill", ["zeros", "ones", "uniform", "gaussian", 0.5, MeanFill(torch.linspace(0, 1, 14))])
def test_efficiency_on_the_unet(fill):
    model, x = small_unet(), torch.randn(3, 14, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        phi, v = modality_shapley(model, x, LAYOUT, GROUPS4, fill, generator=gen(1), return_values=True)
        clean = model(x).mean((1, 2, 3))
    assert phi.shape == (3, 4) and v.shape == (3, 16)
    torch.testing.assert_close(v[:, -1], clean, rtol=0, atol=1e-12)
    torch.testing.assert_close(phi.sum(1), v[:, -1] - v[:, 0], rtol=0, atol=1e-10)


def test_all_absent_coalition_is_the_all_occluded_input():
    model, x = small_unet(), torch.randn(2, 14, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        v = coalition_values(model, x, LAYOUT, GROUPS4, "ones")
        torch.testing.assert_close(v[:, 0], model(torch.ones_like(x)).mean((1, 2, 3)), rtol=0, atol=1e-12)


def test_random_fill_is_shared_by_every_coalition():
    x = torch.rand(2, 14, 8, 8)
    rows = torch.cat([c[0] for c in coalition_chunks(x, LAYOUT, GROUPS4, "uniform", generator=gen(), chunk_size=5)])
    rows = rows.view(16, 2, 14, 8, 8)
    s2 = LAYOUT.indices("s2")
    absent = [s for s in range(16) if not s & 1]  # coalitions without S2 (bit 0)
    for s in absent[1:]:
        assert torch.equal(rows[s][:, s2], rows[absent[0]][:, s2])
    assert not torch.equal(rows[0][:, s2], x[:, s2])


def test_group_order_permutes_the_values():
    model, x = small_unet(), torch.randn(2, 14, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        a = modality_shapley(model, x, LAYOUT, GROUPS4, "zeros")
        b = modality_shapley(model, x, LAYOUT, GROUPS4[::-1], "zeros")
    torch.testing.assert_close(b, a.flip(1), rtol=0, atol=1e-10)


def test_symmetry():
    wc, nl = LAYOUT.indices("worldcover")[0], LAYOUT.indices("viirs")[0]

    def f(t):  # land cover and night lights enter only through their sum
        return torch.sigmoid(3 * (t[:, wc : wc + 1] + t[:, nl : nl + 1]) - t[:, :1])

    x = torch.rand(4, 14, 8, 8, dtype=torch.float64)
    x[:, nl] = x[:, wc]
    phi = modality_shapley(f, x, LAYOUT, GROUPS4, "zeros")
    torch.testing.assert_close(phi[:, 2], phi[:, 3], rtol=0, atol=1e-12)
    assert (phi[:, 2].abs() > 1e-3).all()


def test_dummy_modality_gets_zero():
    torch.manual_seed(0)
    unet = UNet(13, 1, base_channels=4).eval().double()

    def without_viirs(t):  # a U-Net on the first 13 channels: it never reads VIIRS
        return unet(t[:, :13])

    x = torch.randn(2, 14, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        phi = modality_shapley(without_viirs, x, LAYOUT, GROUPS4, "gaussian", generator=gen())
    torch.testing.assert_close(phi[:, 3], torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (phi[:, 0].abs() > 1e-6).all()


@pytest.mark.parametrize("n", [1, 3, 6])
def test_linear_model_closed_form(n):
    layout, groups = six_group_layout(n)
    torch.manual_seed(n)
    lin = nn.Conv2d(layout.n_channels, 1, 1).double()
    x = torch.rand(3, layout.n_channels, 5, 5, dtype=torch.float64)
    mean = torch.rand(layout.n_channels)
    with torch.no_grad():
        phi = modality_shapley(lin, x, layout, groups, MeanFill(mean), chunk_size=17)
    w, xm = lin.weight.detach().flatten(), x.mean((2, 3))
    closed = torch.stack([(w[ix] * (xm[:, ix] - mean.double()[ix])).sum(1) for ix in map(layout.indices, groups)], 1)
    torch.testing.assert_close(phi, closed, rtol=0, atol=1e-12)


def test_interaction_is_split_where_occlusion_double_counts():
    b2, vv = LAYOUT.indices("s2")[0], LAYOUT.indices("s1")[0]

    def f(t):
        return t[:, b2 : b2 + 1] * t[:, vv : vv + 1]

    x = torch.rand(3, 14, 8, 8, dtype=torch.float64)
    y = f(x).mean((1, 2, 3))
    phi = modality_shapley(f, x, LAYOUT, ["s2", "s1"], "zeros")
    occ = output_occlusion(f, x, LAYOUT, ["s2", "s1"], "zeros")
    torch.testing.assert_close(phi, torch.stack([y, y], 1) / 2)
    torch.testing.assert_close(occ, torch.stack([y, y], 1))


# --- chunking, reductions, errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 64, None])
def test_chunk_size_does_not_change_the_values(chunk_size):
    model, x = small_unet(), torch.randn(4, 14, 16, 16, dtype=torch.float64)
    calls = []

    def counted(t):
        calls.append(t.shape[0])
        return model(t)

    with torch.no_grad():
        ref = modality_shapley(model, x, LAYOUT, GROUPS4, "zeros")
        phi = modality_shapley(counted, x, LAYOUT, GROUPS4, "zeros", chunk_size=chunk_size)
    torch.testing.assert_close(phi, ref, rtol=0, atol=1e-10)
    assert sum(calls) == 16 * 4 and max(calls) == min(chunk_size or 4, 64)  # default: B rows per call


@pytest.mark.parametrize("reduce", ["mean", "sum", "abs_mean", "l2"])
def test_named_reductions(reduce):
    model, x = small_unet(), torch.randn(2, 14, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        v = coalition_values(model, x, LAYOUT, GROUPS4, "zeros", reduce)
        y = model(x).flatten(1)
    want = {"mean": y.mean(1), "sum": y.sum(1), "abs_mean": y.abs().mean(1), "l2": y.norm(dim=1)}[reduce]
    torch.testing.assert_close(v[:, -1], want, rtol=1e-12, atol=1e-12)


def test_bad_reduce_and_chunk_size():
    model, x = small_unet(), torch.randn(2, 14, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="one number per row"):
        modality_shapley(model, x, LAYOUT, GROUPS4, reduce=lambda y: y.mean())
    with pytest.raises(ValueError, match="reduce must be"):
        modality_shapley(model, x, LAYOUT, GROUPS4, reduce="median")
    with pytest.raises(ValueError, match="chunk_size"):
        modality_shapley(model, x, LAYOUT, GROUPS4, chunk_size=-1)
    with pytest.raises(ValueError, match=r"2\^N columns"):
        shapley_from_values(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="channel"):
        modality_shapley(model, x, LAYOUT, GROUPS4, channels=("s1:VV",) * 14)


def test_training_mode_warns():
    model, x = small_unet().train(), torch.randn(2, 14, 16, 16, dtype=torch.float64)
    with pytest.warns(UserWarning, match="model.eval"), torch.no_grad():
        modality_shapley(model, x, LAYOUT, ["s1"])


# --- captum's exact values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fill", ["zeros", "ones", "mean", "random"])
def test_equals_captum_on_the_paper2_unet(fill):
    model, x = small_unet(), torch.randn(2, 14, 16, 16, dtype=torch.float64)
    if fill == "mean":
        m = torch.linspace(-1, 1, 14, dtype=torch.float64)
        ours_fill, baselines = MeanFill(m), m.view(1, 14, 1, 1).expand_as(x).clone()  # captum runs it
    elif fill == "random":  # a fixed random baseline image, given to both as a callable occluder / a tensor
        base = torch.randn(x.shape, dtype=torch.float64, generator=gen(3))
        ours_fill, baselines = (lambda t, ch, g=None: base[:, ch]), base
    else:
        ours_fill, baselines = fill, {"zeros": 0.0, "ones": 1.0}[fill]
    with torch.no_grad():
        ours = modality_shapley(model, x, LAYOUT, GROUPS4, ours_fill, chunk_size=24)
    theirs = captum_shapley(lambda t: model(t).mean((1, 2, 3)), x, LAYOUT, GROUPS4, baselines)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_equals_captum_in_single_precision():
    model, x = small_unet(dtype=torch.float32), torch.randn(2, 14, 16, 16)
    with torch.no_grad():
        ours = modality_shapley(model, x, LAYOUT, GROUPS4, "zeros")
    theirs = captum_shapley(lambda t: model(t).mean((1, 2, 3)), x, LAYOUT, GROUPS4, 0.0)
    torch.testing.assert_close(ours.double(), theirs, rtol=0, atol=1e-5)


def test_ungrouped_channels_stay_in_every_coalition():
    """Groups s1 and viirs only: the 11 other channels are never occluded.  captum sees them as a third player
    whose baseline is the input itself (a dummy), which leaves the two players' values unchanged."""
    model, x = small_unet(), torch.randn(2, 14, 16, 16, dtype=torch.float64)
    groups = ["s1", "viirs"]
    with torch.no_grad():
        ours = modality_shapley(model, x, LAYOUT, groups, "zeros")
    base = x.clone()
    base[:, LAYOUT.indices("s1") + LAYOUT.indices("viirs")] = 0
    theirs = captum_shapley(lambda t: model(t).mean((1, 2, 3)), x, LAYOUT, groups, base)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_equals_captum_on_the_paper3_multishot_net_per_class():
    """Multi-label: the value of class k is its logit (a callable reduction); captum's ``target=k``."""
    torch.manual_seed(0)
    layout = BIGEARTHNET.layout()
    net = MultishotFusionNet(layout, num_classes=5, depth=18, hidden=16).eval().double()
    x = torch.randn(2, layout.n_channels, 32, 32, dtype=torch.float64)
    for k in (0, 3):
        with torch.no_grad():
            ours = modality_shapley(net, x, layout, ["s1", "s2"], "zeros", lambda y, k=k: y[:, k])
        theirs = captum_shapley(net, x, layout, ["s1", "s2"], 0.0, target=k)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_equals_captum_on_the_paper4_mmtm_net():
    """Paper 4's dual-stream U-Net; the value is the mean fused built-up probability (Eq. 2)."""
    torch.manual_seed(0)
    layout = paper4_layout()
    net = DualStreamUNetMMTM(topology=(4, 8), layout=layout).eval().double()
    x = torch.rand(2, layout.n_channels, 16, 16, dtype=torch.float64)

    def fused(y):
        return net.fuse(y).mean((1, 2, 3))

    with torch.no_grad():
        ours = modality_shapley(net, x, layout, ["s1", "s2"], "zeros", fused)
    theirs = captum_shapley(lambda t: fused(net(t)), x, layout, ["s1", "s2"], 0.0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


# --- over a dataset --------------------------------------------------------------------------------------------


def test_dataset_shapley_matches_batch_values_and_names_the_baseline():
    model = small_unet(dtype=torch.float32).train()
    x = torch.randn(5, 14, 16, 16)
    loaders = {
        "dicts": [{"image": x[:2], "id": torch.tensor([10, 11])}, {"image": x[2:], "id": torch.tensor([12, 13, 14])}],
        "tuples": [(x[:3], None), (x[3:], None)],
        "tensors": [x[:4], x[4:]],
    }
    with torch.no_grad():
        ref = modality_shapley(model.eval(), x, LAYOUT, GROUPS4, "ones")
    model.train()
    for name, loader in loaders.items():
        df = dataset_shapley(model, loader, LAYOUT, GROUPS4, "ones", progress=False)
        assert isinstance(df, pd.DataFrame) and list(df.columns) == ["id", *GROUPS4], name
        want_ids = [10, 11, 12, 13, 14] if name == "dicts" else [0, 1, 2, 3, 4]
        assert df["id"].tolist() == want_ids, name
        torch.testing.assert_close(torch.tensor(df[GROUPS4].to_numpy(), dtype=torch.float32), ref,
                                   rtol=1e-5, atol=1e-6)
        assert df.attrs == {"groups": GROUPS4, "fill": "ones", "reduce": "mean", "id_key": "id",
                            "method": "shapley"}
        assert model.training


def test_dataset_shapley_checks_the_stacking_and_overlaps():
    model = small_unet(dtype=torch.float32)
    x = torch.randn(2, 14, 16, 16)
    names = tuple(f"{m}:{b}" for m, b in LAYOUT.channels)
    swapped = (names[10], names[11], *names[:10], *names[12:])
    with pytest.raises(ValueError, match="restack"):
        dataset_shapley(model, [{"image": x, "layout": swapped}], LAYOUT, GROUPS4, progress=False)
    with pytest.raises(ValueError, match="overlap"):
        dataset_shapley(model, [x], LAYOUT, ["s2", "s2_rgb"], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = dataset_shapley(model, [{"image": x, "layout": names}], LAYOUT, GROUPS4, progress=False,
                             reduce=lambda y: y.amax((1, 2, 3)))
    assert df.attrs["reduce"] == "<lambda>" and len(df) == 2


def test_benchmark_runs_and_agrees_with_captum(capsys):
    """The benchmark script on a tiny U-Net: it runs, prints both targets and our values equal captum's."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "bench_shapley.py"
    spec = importlib.util.spec_from_file_location("bench_shapley", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--batch", "2", "--size", "16", "--base-channels", "4", "--rounds", "1", "--captum-rounds", "1",
                      "--warmup", "0"])
    out = capsys.readouterr().out
    assert "(a) ours / plain" in out and "(b) captum / ours" in out
    assert res["max_abs_diff"] < 1e-5 and res["ratio_a"] > 0 and res["ratio_b"] > 0
