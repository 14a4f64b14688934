"""MapInWild loader and simulated-layout writer: layouts, normalisation, windowed crops, errors, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rasterio.windows import Window

import fusionbook.data.base as base
import fusionbook.data.mapinwild as mw
from fusionbook.data.io import DatasetError, MissingFileError, grid_transform, read_raster, write_geotiff
from fusionbook.data.mapinwild import (
    S1_MEAN,
    S1_STD,
    VIIRS_MEAN,
    VIIRS_STD,
    MapInWild,
    denormalize,
    detect_layout,
    normalize,
    plot_sample,
    simulate_mapinwild,
    true_color,
)
from fusionbook.modality import MAPINWILD, stack

SIZE = 32
REAL_WC = (Path(__file__).resolve().parents[1] / "data" / "worldcover_saotome_1920px"
           / "worldcover_2020_saotome_1920px.tif")

def Stack(order):
    "The stacking step of these tests: ``sample['image'] = stack(sample, order)`` (per-modality tensors kept)."
    def add_image(sample):
        return {**sample, "image": stack(sample, tuple(order))}
    return add_image



def _arrays(i: int, size: int = SIZE) -> dict[str, np.ndarray]:
    "Raw on-disk arrays of AOI ``i``; S2 band b holds 100·(b+1) + i so the channel order is visible."
    rng = np.random.default_rng(i)
    ni = (rng.random((1, size, size)) * 100).astype(np.float32)
    ni[0, :3, :5] = np.nan
    return {
        "s2": np.stack([np.full((size, size), 100 * (b + 1) + i, np.uint16) for b in range(10)]),
        "s1": rng.normal((-11, -18), (3, 4), (size, size, 2)).transpose(2, 0, 1).astype(np.float64),
        "worldcover": rng.choice([10, 20, 30, 50, 80, 95, 100], (1, size, size)).astype(np.uint8),
        "viirs": rng.gamma(1.0, 2.0, (1, size, size)).astype(np.float32),
        "mask": (rng.choice([0, 1, 4], (1, size, size))).astype(np.int8),
        "naturalness": ni,
    }


AUTHORS = {"s2": "s2_summer", "s1": "S1", "worldcover": "ESA_WC", "viirs": "VIIRS", "mask": "mask", "naturalness": "NI"}


def write_root(root: Path, ids=(11, 12, 13, 14), layout: str = "authors", size: int = SIZE) -> Path:
    "A hand-written MapInWild root (authors' layout, or the release layout with S1/S2 in two parts)."
    for k, i in enumerate(ids):
        for name, arr in _arrays(i, size).items():
            folder = AUTHORS[name]
            if layout == "release":
                folder = "s1" if name == "s1" else folder
                if name in ("s1", "s2"):
                    folder += "_part1" if k % 2 == 0 else "_part2"
            write_geotiff(root / folder / f"{i}.tif", arr)
    table = pd.DataFrame({"train": pd.Series(ids[:2], dtype=float), "validation": pd.Series(ids[2:3], dtype=float),
                          "test": pd.Series(ids[3:], dtype=float)})
    table.to_csv(root / ("tvt_split.csv" if layout == "authors" else "split_IDs.csv"))
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_root(tmp_path / "mapinwild")


def _expected(i: int, crop=None) -> dict[str, np.ndarray]:
    a = _arrays(i)
    out = {
        "s2": a["s2"].astype(np.int32).astype(np.float64) / 10000,
        "s1": (a["s1"] - np.array(S1_MEAN)[:, None, None]) / np.array(S1_STD)[:, None, None],
        "worldcover": (a["worldcover"].astype(np.float64) - 10) / 90,
        "viirs": (a["viirs"].astype(np.float64) - VIIRS_MEAN) / VIIRS_STD,
        "mask": (a["mask"] != 0).astype(np.float64),
        "target": a["naturalness"] / 100,
    }
    if crop is not None:
        (r, c), h = crop
        out = {k: v[:, r:r + h, c:c + h] for k, v in out.items()}
    return out


# ---------------------------------------------------------------------------------------------- layouts
def test_authors_layout_values_and_order(root: Path):
    ds = MapInWild(root, "train", crop=None)
    assert ds.layout == "authors" and ds.ids == [11, 12] and len(ds) == 2
    s = ds[1]
    exp = _expected(12)
    assert s["id"] == "12" and s["crop"] == (0, 0)
    for k in ("s2", "s1", "worldcover", "viirs", "mask"):
        assert s[k].dtype == torch.float32 and s[k].shape == exp[k].shape, k
        np.testing.assert_allclose(s[k].numpy(), exp[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # channel order B2, B3, …, B12 (band b stores 100·(b+1) + id)
    np.testing.assert_allclose(s["s2"][:, 0, 0].numpy(), (100 * np.arange(1, 11) + 12) / 10000, rtol=1e-6)
    stacked = Stack(MAPINWILD.default_order)(s)["image"]
    assert stacked.shape == (14, SIZE, SIZE)
    assert torch.equal(stacked[10:12], s["s1"]) and torch.equal(stacked[12], s["worldcover"][0])


def test_release_layout_with_parts(tmp_path: Path):
    root = write_root(tmp_path / "rel", layout="release")
    assert detect_layout(root) == "release"
    ds = MapInWild(root, None, crop=None)
    assert ds.layout == "release" and ds.ids == [11, 12, 13, 14]
    assert [d.name for d in ds.folders["s1"]] == ["s1_part1", "s1_part2"]
    for idx, i in enumerate(ds.ids):  # ids from both parts
        np.testing.assert_allclose(ds[idx]["s1"].numpy(), _expected(i)["s1"], rtol=1e-5, atol=1e-6)
    assert MapInWild(root, "test", crop=None).ids == [14]
    # merged folder (after unzipping both parts into one) reads the same
    (root / "s1_part2").rename(root / "s1")
    assert MapInWild(root, None, crop=None).ids == [11, 12, 13, 14]


def test_split_file_argument_and_authors_aux_location(tmp_path: Path, root: Path):
    csv = tmp_path / "elsewhere.csv"
    (root / "tvt_split.csv").rename(csv)
    with pytest.raises(MissingFileError, match="tvt_split.csv"):
        MapInWild(root, "train")
    assert MapInWild(root, "validation", split_file=csv, crop=None).ids == [13]
    aux = root / "aux_" / "split_IDs"
    aux.mkdir(parents=True)
    csv.rename(aux / "tvt_split.csv")
    assert MapInWild(root, "test", layout="authors", crop=None).ids == [14]


def test_unnormalised_and_other_seasons(root: Path):
    write_geotiff(root / "s2_winter" / "11.tif", _arrays(11)["s2"])
    s = MapInWild(root, "train", ("s2", "s1"), season="winter", normalize=False, crop=None, target=None)[0]
    assert set(s) == {"s2", "s1", "id", "crop"}
    assert s["s2"][0, 0, 0] == 111 and s["s1"].dtype == torch.float32
    with pytest.raises(MissingFileError, match="no file 12.tif"):
        MapInWild(root, "train", ("s2",), season="winter")[1]
    with pytest.raises(DatasetError, match="season must be one of"):
        MapInWild(root, season="monsoon")


# ---------------------------------------------------------------------------------------------- normalisation
def test_normalisation_constants_exact():
    assert mw.S2_SCALE == 10000.0
    assert S1_MEAN == (-11.057752150501129, -18.362661381113668)
    assert S1_STD == (3.739166317370456, 4.6393440257502085)
    assert (VIIRS_MEAN, VIIRS_STD) == (2.0381726408726353, 12.640913237652645)
    assert (mw.WC_OFFSET, mw.WC_SCALE, mw.NI_SCALE) == (10.0, 90.0, 100.0)
    vv = np.array([[[-11.057752150501129 + 3.739166317370456]], [[-18.362661381113668]]])
    np.testing.assert_allclose(normalize(vv, "s1")[:, 0, 0], [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(normalize(np.array([[[VIIRS_MEAN + 2 * VIIRS_STD]]]), "viirs"), 2.0, rtol=1e-6)
    x = torch.randn(3, 2, 5, 5) * 4 - 15
    assert torch.allclose(denormalize(normalize(x, "s1"), "s1"), x, atol=1e-5)
    with pytest.raises(ValueError, match="2 channel"):
        normalize(torch.zeros(3, 4, 4), "s1")
    with pytest.raises(KeyError, match="valid"):
        normalize(torch.zeros(1, 4, 4), "mask")


# ---------------------------------------------------------------------------------------------- crops
def test_crops_are_windowed_reads(root: Path, monkeypatch):
    calls = []
    real = base.read_open

    def spy(src, path, **kw):
        calls.append((Path(path).parent.name, kw.get("window")))
        return real(src, path, **kw)

    monkeypatch.setattr(base, "read_open", spy)
    ds = MapInWild(root, "train", crop_size=16, target="naturalness")
    s = ds[0]
    assert len(calls) == 5 and all(isinstance(w, Window) and (w.height, w.width) == (16, 16) for _, w in calls)
    assert len({(w.row_off, w.col_off) for _, w in calls}) == 1  # one window for every modality
    exp = _expected(11, (s["crop"], 16))
    for k in ("s2", "s1", "worldcover", "viirs"):
        np.testing.assert_allclose(s[k].numpy(), exp[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.isnan(s["target"].numpy()), np.isnan(exp["target"]))
    c = MapInWild(root, "train", crop="center", crop_size=16)[0]
    assert c["crop"] == (8, 8)


def test_random_crop_seeding(root: Path):
    first = MapInWild(root, None, crop_size=8, seed=5)
    a = [first[i]["crop"] for i in range(4)]
    ds = MapInWild(root, None, crop_size=8, seed=5)
    assert [ds[i]["crop"] for i in range(4)] == a  # deterministic per instance
    assert [ds[i]["crop"] for i in range(4)] != a  # …and the stream moves on
    by_index = MapInWild(root, None, crop_size=8, seed=5, crop_seeding="index")
    fwd = [by_index[i]["crop"] for i in range(4)]
    assert [by_index[i]["crop"] for i in (3, 2, 1, 0)] == fwd[::-1]  # any order, same crop per index
    by_index.set_epoch(1)
    assert [by_index[i]["crop"] for i in range(4)] != fwd
    assert MapInWild(root, None, crop_size=8, seed=6, crop_seeding="index")[0]["crop"] != fwd[0] or \
        MapInWild(root, None, crop_size=8, seed=7, crop_seeding="index")[0]["crop"] != fwd[0]


def test_256_and_1024_crops_of_a_1920_tile(tmp_path: Path, monkeypatch):
    n = 1920
    yy, xx = np.mgrid[0:n, 0:n]
    wc = np.choose((xx // 97 + yy // 61) % 4, [10, 30, 50, 80]).astype(np.uint8)
    mask = ((xx - 900) ** 2 + (yy - 1100) ** 2 < 500**2).astype(np.int8)
    write_geotiff(tmp_path / "ESA_WC" / "555556115.tif", wc)
    write_geotiff(tmp_path / "mask" / "555556115.tif", mask)
    windows = []
    real = base.read_open
    monkeypatch.setattr(base, "read_open", lambda src, p, **kw: windows.append(kw["window"]) or real(src, p, **kw))
    for size in (256, 1024):
        ds = MapInWild(tmp_path, None, ("worldcover",), target="mask", crop_size=size, layout="authors",
                       normalize=None)
        for _ in range(2):
            s = ds[0]
            r, c = s["crop"]
            assert s["worldcover"].shape == (1, size, size) and s["mask"].shape == (1, size, size)
            np.testing.assert_array_equal(s["worldcover"][0].numpy(), wc[r:r + size, c:c + size])
            np.testing.assert_array_equal(s["mask"][0].numpy(), mask[r:r + size, c:c + size])
    assert windows and all(w is not None and w.width in (256, 1024) for w in windows)
    with pytest.raises(DatasetError, match=r"crop size 2048×2048 is larger than .*555556115.tif"):
        MapInWild(tmp_path, None, ("worldcover",), target="mask", crop_size=2048, layout="authors")[0]


@pytest.mark.skipif(not REAL_WC.is_file(), reason="vendored real WorldCover sample not in this checkout")
def test_real_worldcover_tile_crops(tmp_path: Path):
    (tmp_path / "ESA_WC").mkdir()
    (tmp_path / "ESA_WC" / "7.tif").symlink_to(REAL_WC)
    ds = MapInWild(tmp_path, None, ("worldcover",), target=None, crop_size=1024, layout="authors", normalize=False)
    s = ds[0]
    r, c = s["crop"]
    full = read_raster(REAL_WC)
    np.testing.assert_array_equal(s["worldcover"].numpy(), full[:, r:r + 1024, c:c + 1024])
    assert set(np.unique(s["worldcover"].numpy())) <= {0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100}


# ---------------------------------------------------------------------------------------------- NaN
def test_nan_target_kept_and_nan_inputs(root: Path):
    t = MapInWild(root, "train", target="naturalness", crop=None)[0]["target"]
    assert t[0, :3, :5].isnan().all() and not t[0, 3:].isnan().any() and float(t[0, 3:].max()) <= 1
    s1 = _arrays(12)["s1"].astype(np.float32)
    s1[1, 4, 4] = np.nan
    write_geotiff(root / "S1" / "12.tif", s1)
    with pytest.raises(DatasetError, match=r"S1.*12.tif has 1 NaN"):
        MapInWild(root, "train", crop=None)[1]
    z = MapInWild(root, "train", crop=None, nan_policy="zero")[1]["s1"]
    assert z[1, 4, 4] == 0 and not z.isnan().any()
    assert MapInWild(root, "train", crop=None, nan_policy="keep")[1]["s1"][1, 4, 4].isnan()


# ---------------------------------------------------------------------------------------------- errors
def test_missing_modality_folder(root: Path):
    import shutil

    shutil.rmtree(root / "VIIRS")
    with pytest.raises(MissingFileError, match=r"modality 'viirs'.*'VIIRS/'"):
        MapInWild(root)
    assert len(MapInWild(root, modalities=("s2", "s1"))) == 2
    shutil.rmtree(root / "NI")
    with pytest.raises(MissingFileError, match=r"modality 'naturalness'.*'NI/'"):
        MapInWild(root, modalities=("s2",), target="naturalness")


def test_wrong_layout_hint(root: Path):
    with pytest.raises(MissingFileError, match="is this the 'authors' layout"):
        MapInWild(root, layout="release", split_file=root / "tvt_split.csv")


def test_missing_file_for_one_id(root: Path):
    (root / "ESA_WC" / "12.tif").unlink()
    ds = MapInWild(root, "train", crop=None)
    ds[0]
    with pytest.raises(MissingFileError, match=r"modality 'worldcover': no file 12.tif in .*ESA_WC"):
        ds[1]
    with pytest.raises(MissingFileError):
        ds.verify()


def test_truncated_geotiff(root: Path):
    p = root / "s2_summer" / "12.tif"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DatasetError, match="12.tif"):
        MapInWild(root, "train", crop=None)[1]
    (root / "VIIRS" / "11.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DatasetError, match=r"VIIRS.*11.tif is not a readable GeoTIFF"):
        MapInWild(root, "train", crop=None)[0]


def test_wrong_band_count(root: Path):
    write_geotiff(root / "S1" / "11.tif", _arrays(11)["s1"][:1])
    with pytest.raises(DatasetError, match=r"S1.*11.tif has 1 band\(s\), expected 2"):
        MapInWild(root, "train")[0]
    write_geotiff(root / "s2_summer" / "12.tif", _arrays(12)["s2"][:4])
    with pytest.raises(DatasetError, match="has 4 band"):
        MapInWild(root, "train", ("s2",))[1]


def test_mismatched_shape_and_transform(root: Path):
    write_geotiff(root / "VIIRS" / "11.tif", _arrays(11, 24)["viirs"])
    with pytest.raises(DatasetError, match=r"'viirs'.*24×24.*expected the same shape"):
        MapInWild(root, "train")[0]
    write_geotiff(root / "ESA_WC" / "12.tif", _arrays(12)["worldcover"], transform=grid_transform(x0=0.0))
    with pytest.raises(DatasetError, match=r"'worldcover'.*expected the same grid"):
        MapInWild(root, "train")[1]


def test_unknown_split_and_bad_arguments(root: Path):
    with pytest.raises(DatasetError, match=r"unknown split 'val'.*\['test', 'train', 'validation'\]"):
        MapInWild(root, "val")
    for kw, msg in [({"modalities": ("s2", "optical")}, "modalities"), ({"target": "labels"}, "target"),
                    ({"crop": "corner"}, "crop"), ({"crop_size": 0}, "crop_size"), ({"layout": "zenodo"}, "layout"),
                    ({"nan_policy": "mean"}, "nonfinite"), ({"nonfinite": "mean"}, "nonfinite"),
                    ({"checks": "loud"}, "checks"), ({"normalize": "zscore"}, "normalize")]:
        with pytest.raises(DatasetError, match=msg):
            MapInWild(root, **kw)
    with pytest.raises(IndexError):
        MapInWild(root, "train")[2]


def test_crop_larger_than_tile(root: Path):
    with pytest.raises(DatasetError, match=r"crop size 64×64 is larger than .*s2_summer.11.tif \(32×32\)"):
        MapInWild(root, "train", crop_size=64)[0]
    with pytest.raises(DatasetError, match="larger than"):
        MapInWild(root, "train", crop="center", crop_size=33)[0]


# ---------------------------------------------------------------------------------------------- writer
def _md5(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_writer_determinism(tmp_path: Path):
    kw = dict(n=5, tile_size=48, seasons=("summer", "winter", "temporal_subset"))
    a = _md5(simulate_mapinwild(tmp_path / "a", seed=3, **kw))
    b = _md5(simulate_mapinwild(tmp_path / "b", seed=3, workers=1, **kw))
    c = _md5(simulate_mapinwild(tmp_path / "c", seed=4, **kw))
    assert a == b and len(a) == 5 * 8 + 3
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".tif"))
    with pytest.raises(DatasetError, match="not empty"):
        simulate_mapinwild(tmp_path / "a", n=2, seed=3)


def test_writer_real_layout_dtypes_and_split(tmp_path: Path):
    import rasterio

    root = simulate_mapinwild(tmp_path / "mw", seed=0, tile_size=32)  # default n = 20, 80:10:10
    split = pd.read_csv(root / "tvt_split.csv", index_col=0)
    counts = {c: int(split[c].notna().sum()) for c in ("train", "validation", "test")}
    assert counts == {"train": 16, "validation": 2, "test": 2} and split["validation"].isna().any()
    ids = sorted(int(v) for c in split for v in split[c].dropna())
    assert ids == list(range(555550000, 555550020))
    expect = {"S1": ("float32", 2), "s2_summer": ("uint16", 10), "ESA_WC": ("uint8", 1), "VIIRS": ("float32", 1),
              "mask": ("int8", 1), "NI": ("float32", 1)}
    for folder, (dtype, count) in expect.items():
        with rasterio.open(root / folder / "555550007.tif") as src:
            assert (src.dtypes[0], src.count, src.shape) == (dtype, count, (32, 32)), folder
            assert src.crs.is_projected and src.crs.to_epsg() // 100 in (326, 327) and src.transform.a == 10.0
            if folder == "ESA_WC":
                assert set(np.unique(src.read())) <= {10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100}
            if folder == "s2_summer":
                assert src.descriptions == ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
    ni = np.concatenate([read_raster(p).ravel() for p in sorted((root / "NI").glob("*.tif"))])
    assert np.isnan(ni).any() and 0 <= np.nanmin(ni) and np.nanmax(ni) <= 100
    ds = MapInWild(root, "train", crop_size=16, target="naturalness", nan_policy="error")
    assert len(ds) == 16 and ds.verify() == 16
    s = ds[3]
    assert s["s2"].shape == (10, 16, 16) and s["target"].shape == (1, 16, 16)
    assert -1 < float(s["s1"].mean()) < 1  # dB normalised to roughly zero mean


def test_writer_release_layout(tmp_path: Path):
    root = simulate_mapinwild(tmp_path / "rel", n=4, seed=0, tile_size=32, layout="release",
                              seasons=("summer", "autumn"))
    names = {p.name for p in root.iterdir()}
    assert {"s1_part1", "s1_part2", "s2_summer_part1", "s2_autumn_part2", "ESA_WC", "VIIRS", "mask",
            "split_IDs.csv"} <= names and "S1" not in names and "tvt_split.csv" not in names
    ds = MapInWild(root, None, season="autumn", crop=None)
    assert ds.layout == "release" and len(ds) == 4 and ds.verify() == 4
    aut, summ = ds[0]["s2"], MapInWild(root, None, crop=None)[0]["s2"]
    assert aut.shape == summ.shape and not torch.equal(aut, summ)  # the same ground, another acquisition
    assert torch.equal(ds[0]["worldcover"], MapInWild(root, None, crop=None)[0]["worldcover"])


def test_writer_bad_arguments(tmp_path: Path):
    for kw, msg in [({"n": 0}, "n must be"), ({"layout": "zip"}, "layout"), ({"seasons": ("monsoon",)}, "seasons"),
                    ({"splits": (0.5, 0.5, 0.5)}, "splits"), ({"tile_size": 4}, "tile_size")]:
        with pytest.raises(DatasetError, match=msg):
            simulate_mapinwild(tmp_path / "x", **kw)
    with pytest.raises(ValueError, match="unknown scene knob"):
        simulate_mapinwild(tmp_path / "y", n=1, knobs={"cloudiness": 1.0})


def test_plot(root: Path):
    import matplotlib

    matplotlib.use("Agg")
    ds = MapInWild(root, "train", target="naturalness", crop=None)
    fig = ds.plot(ds[0])
    assert len(fig.axes) == 5
    import matplotlib.pyplot as plt

    plt.close(fig)


# ---------------------------------------------------------------------------------------------- files and plots
def test_modality_files_keys_and_paths(root: Path):
    ds = MapInWild(root, "train", crop=None)
    files = ds.modality_files(1)
    assert list(files) == ["s2", "s1", "worldcover", "viirs", "mask"]
    assert {k: [p.relative_to(root).as_posix() for p in v] for k, v in files.items()} == {
        "s2": ["s2_summer/12.tif"], "s1": ["S1/12.tif"], "worldcover": ["ESA_WC/12.tif"],
        "viirs": ["VIIRS/12.tif"], "mask": ["mask/12.tif"]}
    nat = MapInWild(root, "test", modalities=("s1",), target="naturalness")
    assert nat.modality_files(0) == {"s1": [root / "S1" / "14.tif"], "target": [root / "NI" / "14.tif"]}
    assert MapInWild(root, "train", target=None).modality_files(0).keys() == {"s2", "s1", "worldcover", "viirs"}
    (root / "VIIRS" / "11.tif").unlink()
    with pytest.raises(MissingFileError, match="viirs"):
        MapInWild(root, "train").modality_files(0)


def test_true_color_and_plot_through_fusionbook_plot(root: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = MapInWild(root, "train", crop=None, normalize=False)[0]
    rgb = true_color(raw["s2"], normalized=False)
    b4, b3, b2 = (_arrays(11)["s2"][k, 0, 0] / 10000 for k in (2, 1, 0))
    np.testing.assert_allclose(rgb[0, 0], np.clip(np.array([b4, b3, b2]) / 0.25, 0, 1) ** (1 / 1.3), rtol=1e-5)
    assert rgb.dtype == np.float32 and rgb.shape == (SIZE, SIZE, 3)
    norm = MapInWild(root, "train", crop=None)
    fig_n, fig_r = norm.plot(norm[0], size=2.0), MapInWild(root, "train", crop=None, normalize=False).plot(raw)
    for a, b in zip(fig_n.axes, fig_r.axes):  # the same picture from normalised and raw values
        np.testing.assert_allclose(np.asarray(a.images[0].get_array(), float), np.asarray(b.images[0].get_array(),
                                   float), atol=1e-4)
    assert fig_n.get_size_inches()[1] == pytest.approx(2.0)
    assert plot_sample({"s1": raw["s1"]}, normalized=False, titles=False).axes[0].get_title() == ""
    with pytest.raises(DatasetError, match="none of the MapInWild keys"):
        plot_sample({"id": 1})
    plt.close("all")


def test_instance_crops_differ_between_dataloader_workers(tmp_path):
    import torch

    root = simulate_mapinwild(tmp_path / "miw", n=4, seed=0, tile_size=128)
    ds = MapInWild(root, split=None, modalities=("s1",), target=None, crop_size=32, seed=31)
    ds.ids = ds.ids[:1] * 8  # the same tile eight times: only the crop position differs

    def crops(seed):
        g = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, generator=g)
        return [tuple(int(v) for v in b["crop"]) for b in loader]

    first = crops(0)
    assert len(set(first)) > 4  # the two workers do not repeat each other's crops
    assert crops(0) == first  # and a seeded loader reproduces them


def test_small_simulation_fills_every_split(tmp_path):
    root = simulate_mapinwild(tmp_path / "miw", n=3, seed=0, tile_size=64)
    assert [len(MapInWild(root, split=s, crop_size=32)) for s in ("train", "validation", "test")] == [1, 1, 1]
