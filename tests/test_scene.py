"""Scene physics, determinism, knobs, realism targets and the `simulate` dispatcher."""

import json
import math
import sys
import types

import numpy as np
import pytest

from fusionbook.data.scene import (
    BEN_S1_MEAN,
    BEN_S2_MEAN,
    DEFAULT_CLASS_WEIGHTS,
    SCENE_MODALITIES,
    WORLDCOVER_CLASSES,
    Scene,
    SceneKnobs,
    landcover_map,
    planted_signal_report,
    realism_report,
    s2_band_index,
    simulate_scene,
)
from fusionbook.data.simulate import (
    DATASETS,
    MANIFEST,
    cache_dir,
    manifest_record,
    read_manifest,
    simulate,
    split_knobs,
    write_manifest,
)
from fusionbook.modality import BEN_S2

ARRAYS = ("landcover", "s2", "s1", "viirs", "cloud", "shadow", "snow", "buildings", "protected", "naturalness")


def class_means(x: np.ndarray, lc: np.ndarray, min_share: float = 0.02) -> dict[int, np.ndarray]:
    u, n = np.unique(lc, return_counts=True)
    return {int(c): x[:, lc == c].mean(1) for c in u[n >= min_share * lc.size]}


def equal(a: Scene, b: Scene, names=ARRAYS) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k), equal_nan=True) for k in names)


# ---------------------------------------------------------------------------------------------- knobs
def test_knobs_from_dict_and_validation():
    k = SceneKnobs.from_dict({"informative": "s1", "cloud_rate": 0.25, "s1_looks": math.inf})
    assert (k.informative, k.cloud_rate, k.s1_looks, k.signal_strength) == ("s1", 0.25, math.inf, 1.0)
    assert SceneKnobs.from_dict(k.to_dict()) == k
    assert SceneKnobs.from_dict(None) == SceneKnobs()
    with pytest.raises(ValueError, match="valid knobs") as e:
        SceneKnobs.from_dict({"cloud_fraction": 0.1})
    assert "cloud_rate" in str(e.value) and "cloud_fraction" in str(e.value)


@pytest.mark.parametrize("name,value", [
    ("cloud_rate", 1.2), ("cloud_rate", -0.1), ("s2_signal", 2.0), ("s1_signal", float("nan")),
    ("s2_noise", -0.01), ("s1_looks", 0.0), ("urban_fraction", 1.0), ("snow_rate", math.inf),
    ("structure_scale", 0.0), ("viirs_signal", "1"), ("missing_optical_rate", True), ("signal_strength", 1.5),
    ("signal_strength", "0.5"), ("informative", "sar"), ("informative", "s1:-1"), ("informative", 2.0),
])
def test_knob_out_of_range(name, value):
    with pytest.raises(ValueError, match=name):
        SceneKnobs(**{name: value})


# ------------------------------------------------------------------------------------ determinism, API
def test_same_seed_bit_identical_other_seed_differs():
    a, b = simulate_scene(96, 11), simulate_scene(96, 11)
    assert equal(a, b) and a.seed == 11
    c = simulate_scene(96, 12)
    assert not np.array_equal(a.s1, c.s1) and not np.array_equal(a.s2, c.s2)


def test_generator_seed_is_recorded_and_replays():
    a = simulate_scene((40, 56), np.random.default_rng(3))
    assert equal(a, simulate_scene((40, 56), a.seed))
    assert equal(a, simulate_scene((40, 56), np.random.default_rng(3)))


def test_shapes_dtypes_ranges():
    sc = simulate_scene((48, 80), 0, SceneKnobs(cloud_rate=0.5, snow_rate=0.3))
    assert sc.landcover.shape == (48, 80) and sc.landcover.dtype == np.uint8
    assert sc.s2.shape == (12, 48, 80) and sc.s2.dtype == np.float32
    assert sc.s1.shape == (2, 48, 80) and sc.s1.dtype == np.float32
    assert sc.viirs.dtype == np.float32 and sc.naturalness.dtype == np.float32
    for m in ("cloud", "shadow", "snow", "buildings", "protected"):
        assert getattr(sc, m).dtype == bool and getattr(sc, m).shape == (48, 80)
    assert 0 <= sc.s2.min() and sc.s2.max() <= 1
    assert np.isfinite(sc.s1).all() and -45 < sc.s1.min() and sc.s1.max() < 20
    assert (sc.viirs >= 0).all()
    ni = sc.naturalness[np.isfinite(sc.naturalness)]
    assert ni.min() >= 0 and ni.max() <= 100
    assert set(np.unique(sc.landcover).tolist()) <= set(WORLDCOVER_CLASSES)
    assert abs(sum(sc.class_fractions().values()) - 1) < 1e-9


def test_s2_band_names():
    sc = simulate_scene(32, 0)
    assert np.array_equal(sc.s2_bands(["B2", "B02", "b8a", "B12"]), sc.s2[[1, 1, 8, 11]])
    assert [s2_band_index(b) for b in BEN_S2] == list(range(12))
    with pytest.raises(ValueError, match="B10"):
        sc.s2_bands(["B10"])
    with pytest.raises(ValueError, match="VV"):
        sc.s1_bands(["HH"])
    assert np.array_equal(sc.s1_bands(["VH"]), sc.s1[[1]])


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        simulate_scene((4, 64), 0)
    with pytest.raises(ValueError, match="seed"):
        simulate_scene(32, -1)
    with pytest.raises(ValueError, match="WorldCover"):
        simulate_scene(32, 0, class_weights={10: 1.0, 11: 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        landcover_map((32, 32), np.random.default_rng(0), {10: 0.0})
    with pytest.raises(ValueError, match="no-data"):
        simulate_scene(None, 0, landcover=np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        simulate_scene(40, 0, landcover=np.full((32, 32), 10, np.uint8))
    with pytest.raises(ValueError, match="valid knobs"):
        simulate_scene(32, 0, {"cloud_cover": 0.1})


# ------------------------------------------------------------------------------------------ land cover
def test_landcover_structured_and_weights():
    rng = np.random.default_rng(0)
    lc = landcover_map((160, 160), rng, concentration=math.inf)
    u, c = np.unique(lc, return_counts=True)
    shares = dict(zip(u.tolist(), c / c.sum()))
    for code, w in DEFAULT_CLASS_WEIGHTS.items():
        assert abs(shares.get(code, 0) - w) < 0.01, (code, shares)
    # spatially structured: neighbours agree far more than for shuffled pixels
    agree = (lc[:, 1:] == lc[:, :-1]).mean()
    shuffled = rng.permutation(lc.ravel()).reshape(lc.shape)
    assert agree > 0.8 > 0.5 > (shuffled[:, 1:] == shuffled[:, :-1]).mean()
    only = landcover_map((64, 64), rng, {10: 1.0, 80: 1.0}, concentration=math.inf)
    assert set(np.unique(only).tolist()) == {10, 80}


def test_urban_fraction_and_given_landcover():
    fr = [simulate_scene(96, i).class_fractions().get(50, 0.0) for i in range(24)]
    assert abs(np.mean(fr) - 0.12) < 0.06
    assert not simulate_scene(96, 1, SceneKnobs(urban_fraction=0)).buildings.any()
    lc = np.full((64, 64), 30, np.uint8)
    lc[20:40, 20:40] = 50
    sc = simulate_scene(None, 0, landcover=lc)
    assert np.array_equal(sc.landcover, lc) and np.array_equal(sc.buildings, lc == 50)


# -------------------------------------------------------------------------------------------- physics
def test_optical_signatures():
    exact = math.inf
    sc = simulate_scene(256, 4, SceneKnobs(cloud_rate=0, composition_concentration=exact),
                        class_weights={10: 1, 30: 1, 60: 1, 80: 1})
    m = class_means(sc.s2, sc.landcover)
    b = {n: i for i, n in enumerate(BEN_S2)}
    tree, grass, bare, water = m[10], m[30], m[60], m[80]
    for veg in (tree, grass):  # red edge: B04 ≪ B08, NIR plateau
        assert veg[b["B08"]] > 4 * veg[b["B04"]] and veg[b["B8A"]] > veg[b["B05"]]
    assert water[b["B08"]] < 0.03 and water[b["B11"]] < 0.01 and water[b["B03"]] > water[b["B08"]]
    assert bare[b["B04"]] > bare[b["B03"]] > bare[b["B02"]] and bare[b["B11"]] > bare[b["B08"]]  # rising soil
    built = simulate_scene(128, 2, SceneKnobs(cloud_rate=0, urban_fraction=0.5, composition_concentration=exact))
    mb = class_means(built.s2, built.landcover)[50]
    assert np.ptp(mb[1:9]) < 0.1 and mb[b["B04"]] > tree[b["B04"]]  # flat and bright


def test_sar_signatures_and_speckle():
    kn = dict(urban_fraction=0.2, composition_concentration=math.inf)
    w = {10: 1, 40: 1, 80: 1}
    sc = simulate_scene(256, 1, SceneKnobs(**kn), class_weights=w)
    m = class_means(sc.s1, sc.landcover)
    assert m[50][0] > m[10][0] > m[40][0] > m[80][0]  # double bounce > volume > surface > specular
    assert -26 < m[80][0] < -18 and -17 < m[10][1] < -12
    assert (m[10][0] > m[10][1]) and all(v[0] > v[1] for v in m.values())  # VV above VH
    clean = simulate_scene(256, 1, SceneKnobs(**kn, s1_looks=math.inf), class_weights=w)
    many = simulate_scene(256, 1, SceneKnobs(**kn, s1_looks=50), class_weights=w)
    water = sc.landcover == 80
    sd = [x.s1[0, water].std() for x in (sc, many, clean)]
    assert sd[0] > sd[1] > sd[2]  # fewer looks → more speckle


def test_viirs_and_protected_and_naturalness():
    sc = simulate_scene(256, 6, SceneKnobs(urban_fraction=0.1, protected_fraction=0.3, nodata_fraction=0.02))
    assert sc.viirs[sc.buildings].mean() > 10 * sc.viirs[~sc.buildings].min()
    assert sc.viirs.max() > 5 * np.median(sc.viirs)  # heavy-tailed
    assert abs(sc.protected.mean() - 0.3) < 0.05
    assert sc.buildings[sc.protected].mean() < 0.5 * sc.buildings[~sc.protected].mean()
    nan = np.isnan(sc.naturalness)
    assert 0.005 < nan.mean() < 0.04
    assert np.nanmean(sc.naturalness[sc.buildings]) < np.nanmean(sc.naturalness[sc.landcover == 10])
    with pytest.warns(DeprecationWarning, match="viirs_signal"):  # the deprecated knob makes VIIRS constant
        flat = simulate_scene(256, 6, SceneKnobs(urban_fraction=0.1, viirs_signal=0))
    assert np.ptp(flat.viirs) < 0.01 * np.ptp(sc.viirs)


# ------------------------------------------------------------------------------ planted-signal knobs
PLANTED = {"all": {}, "s2": {"informative": "s2"}, "s1": {"informative": "s1"}, "s2,worldcover": {
    "informative": "s2,worldcover"}, "s2 half": {"informative": "s2", "signal_strength": 0.5},
    "none": {"informative": "none"}}
TARGETS = ("landcover", "buildings", "protected", "naturalness")
NUISANCE = ("cloud", "shadow", "snow")
MODALITY_ARRAY = {"s2": "s2", "s1": "s1", "viirs": "viirs", "worldcover": "worldcover"}


def test_informative_parsing_and_canonical_form():
    test = {"all": "all", "s2,s1,viirs,worldcover": "all", "landcover,S2": "s2,worldcover", "none": "none",
            "": "none", None: "none", ("s1",): "s1", "s2:0.5, s1": "s2:0.5,s1"}
    for given, canon in test.items():
        assert SceneKnobs(informative=given).informative == canon, given
    assert SceneKnobs(informative={"viirs": 0.25}).strengths() == {"s2": 0.0, "s1": 0.0, "viirs": 0.25,
                                                                    "worldcover": 0.0}
    assert SceneKnobs(informative="s2,s1:0", signal_strength=0.5).planted() == ("s2",)
    with pytest.raises(ValueError, match="valid") as e:
        SceneKnobs(informative="s2,sar")
    assert all(m in str(e.value) for m in SCENE_MODALITIES) and "informative" in str(e.value)
    with pytest.raises(ValueError, match="twice"):
        SceneKnobs(informative="landcover,worldcover")


def test_default_is_all_informative_and_draws_no_independent_scene():
    a = simulate_scene(64, 4)
    assert equal(a, simulate_scene(64, 4, SceneKnobs(informative="s2,s1,viirs,worldcover", signal_strength=1)))
    assert a.decoy_seed is None and a.worldcover is a.landcover and a.signal == {}
    assert all(a.signal_mask(m).all() for m in SCENE_MODALITIES)
    with pytest.raises(ValueError, match="valid"):
        a.signal_mask("sar")


def test_deprecated_collapsing_knobs_warn_and_are_not_the_default():
    assert all(v == 1.0 for k, v in SceneKnobs().to_dict().items() if k.endswith("_signal"))
    with pytest.warns(DeprecationWarning, match="s1_signal"):
        SceneKnobs(s1_signal=0.5)


@pytest.mark.parametrize("kn", [dict(cloud_rate=0.0), dict(cloud_rate=0.4, snow_rate=0.4)])
def test_uninformative_modality_is_an_ordinary_scene(kn):
    "An uninformative modality is the same modality of an ordinary scene (seed `decoy_seed`): same distribution."
    a = simulate_scene(64, 3, SceneKnobs(informative="none", **kn))
    other = simulate_scene(64, a.decoy_seed, SceneKnobs(**kn))
    assert np.array_equal(a.s1, other.s1) and np.array_equal(a.viirs, other.viirs)
    assert np.array_equal(a.worldcover, other.landcover)
    ground = ~(a.cloud | a.shadow | a.snow | other.cloud | other.shadow | other.snow)
    assert np.array_equal(a.s2[:, ground], other.s2[:, ground])  # the optical differs only by nuisance
    if not kn["cloud_rate"]:
        assert np.array_equal(a.s2, other.s2)


@pytest.mark.parametrize("seed", [0, 7])
def test_targets_nuisance_and_informative_modalities_do_not_move(seed):
    kn = dict(cloud_rate=0.4, snow_rate=0.3)
    base = simulate_scene(96, seed, SceneKnobs(**kn))
    assert base.cloud.any() and base.snow.any()  # nuisance present, so its equality below means something
    for name, setting in PLANTED.items():
        sc = simulate_scene(96, seed, SceneKnobs(**kn, **setting))
        assert equal(base, sc, TARGETS + NUISANCE), name  # same targets, same clouds, shadows and snow
        for m, s in sc.knobs.strengths().items():
            x, ref = getattr(sc, MODALITY_ARRAY[m]), getattr(base, MODALITY_ARRAY[m])
            if s == 1:
                assert np.array_equal(x, ref), (name, m)
            else:
                assert not np.array_equal(x, ref), (name, m)
            assert all(np.ptp(c) > 0 for c in np.reshape(x, (-1, *x.shape[-2:]))), (name, m)  # never constant
        if name == "s2 half":
            mask = sc.signal_mask("s2")
            assert abs(mask.mean() - 0.5) < 0.01 and np.array_equal(sc.s2[:, mask], base.s2[:, mask])


def test_signal_strength_zero_equals_uninformative():
    a = simulate_scene(64, 2, SceneKnobs(informative="s2", signal_strength=0.0))
    b = simulate_scene(64, 2, SceneKnobs(informative="none"))
    assert equal(a, b) and not a.signal_mask("s2").any()
    q = simulate_scene(64, 2, SceneKnobs(informative="s2:0.25"))
    assert abs(q.signal_mask("s2").mean() - 0.25) < 0.01


def test_given_landcover_independent_scene_keeps_its_class_shares():
    lc = np.full((64, 64), 30, np.uint8)
    lc[:, :20] = 10
    lc[40:, 30:50] = 50
    sc = simulate_scene(None, 1, SceneKnobs(informative="s1", cloud_rate=0), landcover=lc)
    assert np.array_equal(sc.landcover, lc) and np.array_equal(sc.buildings, lc == 50)
    assert not np.array_equal(sc.worldcover, lc)
    shares = lambda x: {c: float((x == c).mean()) for c in (10, 30, 50)}  # noqa: E731
    assert all(abs(shares(sc.worldcover)[c] - shares(lc)[c]) < 0.03 for c in (10, 30, 50))
    assert np.array_equal(sc.s1, simulate_scene(None, 1, SceneKnobs(cloud_rate=0), landcover=lc).s1)


def test_marginals_equal_across_settings():
    """Every modality's per-channel marginal: informative (setting "all") vs written from the independent
    scene (setting "none"), 40 scenes of 48², exact per-scene class shares (composition_concentration=inf, which
    removes most between-scene variance).  Tolerance: S2/S1/VIIRS |Δmean| < 0.1 sd and sd ratio within
    [0.85, 1.15]; WorldCover class shares |Δ| < 0.07; every paired t-test p > 0.001."""
    inf = dict(composition_concentration=math.inf)
    marg, _ = planted_signal_report({"all": inf, "none": {**inf, "informative": "none"}}, n=40, size=48,
                                    pixels=50, folds=2)
    none = marg[marg.setting == "none"].set_index(["modality", "channel"])
    ref = marg[marg.setting == "all"].set_index(["modality", "channel"])
    cont = none.drop(index="worldcover", level="modality")
    assert (cont.dmean_sd < 0.1).all(), cont[cont.dmean_sd >= 0.1]
    assert cont.sd_ratio.between(0.85, 1.15).all(), cont[~cont.sd_ratio.between(0.85, 1.15)]
    assert ((none.loc["worldcover", "mean"] - ref.loc["worldcover", "mean"]).abs() < 0.07).all()
    assert (none.p > 1e-3).all(), none[none.p <= 1e-3]


def test_dependence_flips_with_the_knob():
    "Cross-fitted per-pixel R² of the naturalness index: high from the informative modality, ≤ 0.05 otherwise."
    settings = {k: PLANTED[k] for k in ("s2", "s1", "s2 half")}
    marg, r2 = planted_signal_report(settings, n=12, size=64)
    assert r2.loc["s2", "s2"] > 0.3 and r2.loc["s1", "s1"] > 0.15
    assert r2.loc["s1", "s2"] < 0.05 and r2.loc["s2", "s1"] < 0.05
    assert (r2.loc[:, ["viirs", "worldcover"]] < 0.05).all().all()
    assert 0.05 < r2.loc["s2 half", "s2"] < r2.loc["s2", "s2"] - 0.1
    assert (marg.p > 1e-3).all()
    with pytest.raises(ValueError, match="target"):
        planted_signal_report(settings, target="labels")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_s1_signal_zero_makes_sar_class_means_equal():
    "Deprecated knob (kept for old configurations): collapses the SAR class means and shrinks its variance."
    base = simulate_scene(256, 5, SceneKnobs(cloud_rate=0))
    flat = simulate_scene(256, 5, SceneKnobs(cloud_rate=0, s1_signal=0))
    spread = lambda s: np.ptp(np.stack(list(class_means(s.s1, s.landcover).values())), 0)  # noqa: E731
    assert spread(flat).max() < 0.5 < 3 < spread(base).min()
    assert equal(base, flat, [a for a in ARRAYS if a != "s1"])  # nothing else changes
    half = simulate_scene(256, 5, SceneKnobs(cloud_rate=0, s1_signal=0.5))
    assert spread(flat).max() < spread(half).min() and spread(half).max() < spread(base).max()
    assert (flat.s1.std((1, 2)) < 0.8 * base.s1.std((1, 2))).all()  # why it is deprecated: the marginal changes


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_s2_signal_zero_makes_optical_class_spectra_equal():
    "Deprecated knob (kept for old configurations)."
    base = simulate_scene(256, 5, SceneKnobs(cloud_rate=0))
    flat = simulate_scene(256, 5, SceneKnobs(cloud_rate=0, s2_signal=0))
    spread = lambda s: np.ptp(np.stack(list(class_means(s.s2, s.landcover).values())), 0)  # noqa: E731
    assert spread(flat).max() < 0.005 and spread(base)[7] > 0.05
    assert equal(base, flat, [a for a in ARRAYS if a != "s2"])
    # the collapsed spectrum is a fixed reference: two different scenes look alike on average
    other = simulate_scene(256, 9, SceneKnobs(cloud_rate=0, s2_signal=0))
    assert np.abs(flat.s2.mean((1, 2)) - other.s2.mean((1, 2))).max() < 0.005


def test_clouds_change_only_the_optical():
    clear = simulate_scene(128, 8, SceneKnobs(cloud_rate=0))
    cloudy = simulate_scene(128, 8, SceneKnobs(cloud_rate=1.0))
    assert not clear.cloud.any() and not clear.shadow.any()
    assert cloudy.cloud.all() and cloudy.s2[:4].mean() > 3 * clear.s2[:4].mean()
    assert equal(clear, cloudy, [a for a in ARRAYS if a not in ("s2", "cloud", "shadow")])
    some = simulate_scene(128, 8, SceneKnobs(cloud_rate=0.5))
    for i in range(20):
        if some.cloud.mean() > 0.05:
            break
        some = simulate_scene(128, 100 + i, SceneKnobs(cloud_rate=0.5))
    ref = simulate_scene(128, some.seed, SceneKnobs(cloud_rate=0))
    changed = np.any(some.s2 != ref.s2, axis=0)
    assert not changed[~some.cloud & ~some.shadow].any()  # only cloud or shadow pixels change
    assert some.s2[7, some.shadow].mean() < ref.s2[7, some.shadow].mean()  # shadows darken
    assert equal(some, ref, ("s1", "viirs", "landcover", "naturalness"))


def test_cloud_and_snow_rates_are_expected_fractions():
    fr = [simulate_scene(48, i, SceneKnobs(cloud_rate=0.2, snow_rate=0.3)) for i in range(80)]
    assert abs(np.mean([s.cloud.mean() for s in fr]) - 0.2) < 0.07
    assert abs(np.mean([s.snow.mean() for s in fr]) - 0.3) < 0.08


def test_snow_is_optical_only():
    dry = simulate_scene(128, 3, SceneKnobs(cloud_rate=0))
    snowy = simulate_scene(128, 3, SceneKnobs(cloud_rate=0, snow_rate=0.9))
    assert not dry.snow.any() and snowy.snow.mean() > 0.3
    assert equal(dry, snowy, [a for a in ARRAYS if a not in ("s2", "snow")])
    open_snow = snowy.snow & np.isin(snowy.landcover, [30, 40, 60])
    b02, b11 = snowy.s2[1, open_snow].mean(), snowy.s2[10, open_snow].mean()
    assert b02 > 0.5 and b11 < 0.2 and b02 > 4 * dry.s2[1, open_snow].mean()


# ------------------------------------------------------------------------------------------- realism
def test_realism_targets():
    rep = realism_report(n=64, size=120, seed=0)
    assert list(rep.band) == [*BEN_S2, "VV", "VH"]
    assert rep.within_target.all(), rep[~rep.within_target]
    s2 = rep[rep.modality == "s2"].set_index("band")
    assert ((s2.ratio - 1).abs() <= 0.35).all()
    assert np.allclose(s2.published_mean, [BEN_S2_MEAN[b] for b in BEN_S2])
    s1 = rep[rep.modality == "s1"].set_index("band")
    assert (s1.diff_db.abs() <= 2.5).all() and s1.published_mean["VV"] == BEN_S1_MEAN["VV"]
    # optical spectrum shape: NIR ≫ visible as in BigEarthNet
    assert s2.simulated_mean["B08"] > 3 * s2.simulated_mean["B04"]


# ----------------------------------------------------------------------------------------- dispatcher
def fake_writer(calls, fail=False):
    def simulate_fake(root, n, seed, knobs, **kw):
        calls.append((root, n, seed, knobs, kw))
        root.mkdir(parents=True, exist_ok=True)
        (root / "sample.txt").write_text("x")
        if fail:
            raise RuntimeError("disk full")
        return root / "sample.txt"
    return simulate_fake


def test_split_knobs():
    k, extra = split_knobs({"informative": "s1", "patch_size": 120, "cloud_rate": 0.5})
    assert isinstance(k, SceneKnobs) and (k.informative, k.cloud_rate) == ("s1", 0.5)
    assert extra == {"patch_size": 120}


def test_simulate_unknown_dataset_and_bad_args(tmp_path):
    with pytest.raises(ValueError, match="valid datasets") as e:
        simulate("eurosat", tmp_path)
    assert all(d in str(e.value) for d in DATASETS)
    with pytest.raises(ValueError, match="n must be"):
        simulate("bigearthnet", tmp_path, n=-3)
    with pytest.raises(ValueError, match="seed"):
        simulate("bigearthnet", tmp_path, seed=-1)
    with pytest.raises(ValueError, match="cloud_rate"):
        simulate("bigearthnet", tmp_path, cloud_rate=3)
    with pytest.raises(ValueError, match="informative"):
        simulate("bigearthnet", tmp_path, informative="optical")
    assert not (tmp_path / MANIFEST).exists()


def test_simulate_calls_writer_and_records(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "fusionbook.data.bigearthnet",
                        types.SimpleNamespace(simulate_bigearthnet=fake_writer(calls)))
    root = tmp_path / "ben"
    out = simulate("bigearthnet", root, n=5, seed=3, informative="s1", cloud_rate=0.2, split=(0.6, 0.2, 0.2))
    assert out == root / "sample.txt"
    (r, n, seed, knobs, kw) = calls[0]
    assert (r, n, seed, kw) == (root, 5, 3, {"split": (0.6, 0.2, 0.2)})
    assert knobs == SceneKnobs(informative="s1", cloud_rate=0.2)
    rec = json.loads((root / MANIFEST).read_text())
    assert rec == read_manifest(root)
    assert (rec["dataset"], rec["n"], rec["seed"]) == ("bigearthnet", 5, 3)
    assert rec["knobs"] == SceneKnobs(informative="s1", cloud_rate=0.2).to_dict() and rec["format"] == 1
    assert MANIFEST == "simulation.json" and rec["generator"] == "fusionbook.data.bigearthnet.simulate_bigearthnet"
    assert rec["writer_kwargs"] == {"split": [0.6, 0.2, 0.2]} and rec["fusionbook_version"]
    assert sorted(p.name for p in root.iterdir()) == sorted([MANIFEST, "sample.txt"])  # no temp files left
    simulate("bigearthnet", root, seed=4)  # n=None passes through
    assert calls[-1][1] is None and read_manifest(root)["n"] is None


def test_simulate_writer_failure_writes_no_record(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fusionbook.data.spacenet7",
                        types.SimpleNamespace(simulate_spacenet7=fake_writer([], fail=True)))
    with pytest.raises(RuntimeError, match="disk full"):
        simulate("spacenet7", tmp_path / "sn7", n=2)
    assert not (tmp_path / "sn7" / MANIFEST).exists()
    with pytest.raises(FileNotFoundError, match=MANIFEST):
        read_manifest(tmp_path / "sn7")


def test_simulate_missing_writer(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fusionbook.data.sen12gum", None)  # module not importable
    with pytest.raises(NotImplementedError, match="sen12gum"):
        simulate("sen12gum", tmp_path)
    monkeypatch.setitem(sys.modules, "fusionbook.data.mapinwild", types.SimpleNamespace())
    with pytest.raises(NotImplementedError, match="simulate_mapinwild"):
        simulate("mapinwild", tmp_path)


def test_no_scene_knobs_means_writer_defaults():
    k, extra = split_knobs({"patch_size": 120})
    assert k is None and extra == {"patch_size": 120}


def test_unknown_writer_argument_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid scene knobs") as e:
        simulate("mapinwild", tmp_path / "x", n=1, bogus=1)
    assert "tile_size" in str(e.value) and "bogus" in str(e.value)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------- manifest and cache
def test_one_manifest_for_every_writer(tmp_path):
    "Through `simulate`, every writer's folder holds one `simulation.json` in the common format."
    kw = {"mapinwild": dict(n=2, tile_size=32), "bigearthnet": dict(n=2), "sen12gum": dict(n=2, patch_size=32,
          test_aois=0), "spacenet7": dict(n=1, size=32, months=2)}
    for d in DATASETS:
        root = tmp_path / d
        simulate(d, root, seed=1, informative="s2", **kw[d])
        rec = read_manifest(root)
        assert (rec["format"], rec["dataset"], rec["seed"]) == (1, d, 1), d
        assert rec["knobs"]["informative"] == "s2" and rec["n"] in (1, 2), d
        assert rec["generator"] == f"fusionbook.data.{d}.simulate_{d}"
        assert not (root / "fusionbook_simulation.json").exists()


def test_manifest_record_and_writer(tmp_path):
    rec = manifest_record("spacenet7", seed=2, n=None, knobs=SceneKnobs(), aois=["a"])
    assert rec["knobs"]["informative"] == "all" and rec["aois"] == ["a"] and rec["n"] is None
    assert json.loads(write_manifest(tmp_path, rec).read_text()) == rec
    with pytest.raises(ValueError, match="common keys"):
        manifest_record("spacenet7", seed=2, n=1, knobs=None, fusionbook_version="0")
    with pytest.raises(ValueError, match="manifest_record"):
        write_manifest(tmp_path, {"seed": 1})


def test_cache_dir_honours_fusionbook_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSIONBOOK_CACHE", str(tmp_path / "fb"))
    assert cache_dir() == tmp_path / "fb" and cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("FUSIONBOOK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fusionbook"


def test_writers_take_targets_from_the_target_scene(tmp_path, tree_digest):
    "BigEarthNet: labels and S1 rasters identical with S1 informative; S2 rasters from the independent scene."
    b = simulate("bigearthnet", tmp_path / "b", n=3, seed=5, informative="s1", cloud_rate=0.02, snow_rate=0.02)
    c = simulate("bigearthnet", tmp_path / "c", n=3, seed=5, cloud_rate=0.02, snow_rate=0.02)
    assert tree_digest(b / "BigEarthNet-S1-v1.0") == tree_digest(c / "BigEarthNet-S1-v1.0")
    assert tree_digest(b / "BigEarthNet-v1.0") != tree_digest(c / "BigEarthNet-v1.0")
    labels = lambda r: sorted(  # noqa: E731
        json.loads(p.read_text())["labels"] for p in (r / "BigEarthNet-v1.0").rglob("*_labels_metadata.json"))
    assert labels(b) == labels(c) and labels(b)
