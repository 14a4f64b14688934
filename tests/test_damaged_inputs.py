"""Damaged copies of simulated data in every loader: what a real file can get wrong (issue: nothing silent).

Each test copies a small simulated dataset, damages one thing, and checks the outcome: a `DatasetError` that
names the file (and what was expected), the documented repair under the opt-in policy, or a warning under
``checks='warn'``.  The classes: non-finite values, units/dtypes/ranges, geometry, metadata, truncated LMDB,
simulation into a non-empty folder.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from torch.utils.data import default_collate

from fusionbook.data.base import DatasetWarning
from fusionbook.data.bigearthnet import BigEarthNetMM, simulate_bigearthnet
from fusionbook.data.io import DatasetError, grid_transform, write_geotiff
from fusionbook.data.mapinwild import MapInWild, simulate_mapinwild
from fusionbook.data.sen12gum import SEN12GUM, simulate_sen12gum
from fusionbook.data.spacenet7 import SpaceNet7S1S2, simulate_spacenet7


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sims(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sims")
    return {
        "mapinwild": simulate_mapinwild(base / "mapinwild", n=2, seed=0, tile_size=32, splits=(1.0, 0.0, 0.0),
                                        workers=1),
        "ben_v1": simulate_bigearthnet(base / "ben_v1", n=2, seed=0, version="v1", splits=(1.0, 0.0, 0.0)),
        "ben_lmdb": simulate_bigearthnet(base / "ben_lmdb", n=2, seed=0, version="lmdb", splits=(1.0, 0.0, 0.0)),
        "sen12gum": simulate_sen12gum(base / "sen12gum", n=2, seed=0, patch_size=32, test_aois=0,
                                      sites=["dallas"]),
        "spacenet7": simulate_spacenet7(base / "spacenet7", aois=["L15-0331E-1257N_1327_3160_13"], size=16,
                                        months=2, availability={}),
    }


def copy(sims, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sims[name], tmp_path / name))


def damage(path: Path, fn) -> Path:
    "Rewrite the GeoTIFF ``path`` with ``fn(array)`` (same grid and band names unless ``fn`` changes the shape)."
    with rasterio.open(path) as src:
        arr, crs, transform, names = src.read(), src.crs, src.transform, src.descriptions
    new = np.asarray(fn(arr.copy()))
    keep = None if any(d is None for d in names) or new.shape[0] != len(names) else names
    write_geotiff(path, new, crs=crs, transform=transform, band_names=keep)
    return path


def miw(root, **kw):
    kw.setdefault("target", "naturalness")
    return MapInWild(root, split=None, crop=None, **kw)


def ben(root, **kw):
    kw.setdefault("version", "v1")
    return BigEarthNetMM(root, split=None, exclude=(), **kw)


def gum(root, **kw):
    return SEN12GUM(root, split="train", **kw)


def sn7(root, **kw):
    return SpaceNet7S1S2(root, split="train", crop_size=None, **kw)


# ------------------------------------------------------------------------------- class 1: non-finite values
NONFINITE = [np.nan, np.inf, -np.inf]
IDS = ["nan", "+inf", "-inf"]


@pytest.mark.parametrize("value", NONFINITE, ids=IDS)
@pytest.mark.parametrize("modality", ["s1", "viirs"])
def test_mapinwild_nonfinite_inputs(sims, tmp_path, value, modality):
    root = copy(sims, "mapinwild", tmp_path)
    f = miw(root).modality_files(0)[modality][0]
    damage(f, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, value, a).astype(a.dtype))
    kind = "NaN" if value != value else IDS[NONFINITE.index(value)]
    with pytest.raises(DatasetError, match=re.escape(f"{f.name} has 1 {kind} value(s)")):
        miw(root)[0]
    x = miw(root, nonfinite="zero")[0][modality]
    assert torch.isfinite(x).all() and x.flatten()[5] == 0  # 0 after normalisation, as the paper occludes


@pytest.mark.parametrize("value", [np.inf, -np.inf], ids=["+inf", "-inf"])
def test_mapinwild_nonfinite_target(sims, tmp_path, value):
    root = copy(sims, "mapinwild", tmp_path)
    f = miw(root).modality_files(0)["target"][0]
    damage(f, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, value, a).astype(a.dtype))
    with pytest.raises(DatasetError, match=rf"{f.name} has 1 [+-]inf"):
        miw(root)[0]
    t = miw(root, nonfinite="zero")[0]["target"]
    assert t.flatten()[3].isnan() and not torch.isinf(t).any()  # inf becomes no data (NaN), masked by the loss


def test_mapinwild_nan_target_is_no_data(sims, tmp_path):
    root = copy(sims, "mapinwild", tmp_path)
    f = miw(root).modality_files(0)["target"][0]
    damage(f, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a).astype(a.dtype))
    assert miw(root)[0]["target"].flatten()[3].isnan()  # accepted by design: NaN = no data in the NI


@pytest.mark.parametrize("value", NONFINITE, ids=IDS)
def test_bigearthnet_nonfinite(sims, tmp_path, value):
    root = copy(sims, "ben_v1", tmp_path)
    f = ben(root).modality_files(0)["s1"][0]
    damage(f, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, value, a).astype(a.dtype))
    with pytest.raises(DatasetError, match=f.name):
        ben(root)[0]
    assert torch.isfinite(ben(root, nonfinite="zero")[0]["s1"]).all()


@pytest.mark.parametrize("value", NONFINITE, ids=IDS)
def test_sen12gum_nonfinite(sims, tmp_path, value):
    root = copy(sims, "sen12gum", tmp_path)
    f = gum(root).modality_files(0)["s1"][0]
    damage(f, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 2, value, a).astype(a.dtype))
    x = gum(root)[0]["s1"]  # the dataset's default policy: the authors' NaN → 0, now for ±inf too
    assert torch.isfinite(x).all() and x.flatten()[2] == 0 and x.abs().max() <= 1
    with pytest.raises(DatasetError, match=f.name):
        gum(root, nonfinite="error")[0]


@pytest.mark.parametrize("value", NONFINITE, ids=IDS)
def test_spacenet7_nonfinite(sims, tmp_path, value):
    root = copy(sims, "spacenet7", tmp_path)
    f = sn7(root).modality_files(0)["s2"][0]
    damage(f, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 2, value, a).astype(a.dtype))
    x = sn7(root)[0]["s2"]
    assert torch.isfinite(x).all() and x.flatten()[2] == 0  # +inf is no longer clipped to 1
    with pytest.raises(DatasetError, match=f.name):
        sn7(root, nonfinite="error")[0]


# ------------------------------------------------------------------------ class 2: units, dtypes, ranges
def _rewrite(dtype=None, scale=1.0, offset=0.0):
    return lambda a: (a.astype(np.float64) * scale + offset).astype(dtype or a.dtype)


MIW_UNITS = {
    "float S2 reflectance (0..1) for uint16 x 10000": ("s2", _rewrite(np.float32, 1e-4), "stores float32"),
    "naturalness 1e6": ("target", lambda a: np.where(np.isnan(a), a, 1e6).astype(a.dtype), "expected naturalness"),
    "WorldCover code 37": ("worldcover", lambda a: np.where(a == a.flat[0], 37, a).astype(a.dtype), r"\[37\]"),
    "float mask 0.3..0.8": ("mask", lambda a: (0.3 + 0.5 * (a > 0)).astype(np.float32), "stores float32"),
    "S1 in linear power x 1e3 (dB expected)": ("s1", lambda a: (10 ** (a / 10) * 1e3).astype(a.dtype), "in dB"),
}


@pytest.mark.parametrize("case", list(MIW_UNITS))
def test_mapinwild_units(sims, tmp_path, case):
    key, fn, msg = MIW_UNITS[case]
    root = copy(sims, "mapinwild", tmp_path)
    target = "mask" if key == "mask" else "naturalness"
    f = miw(root, target=target).modality_files(0)[key][0]
    damage(f, fn)
    with pytest.raises(DatasetError, match=msg) as e:
        miw(root, target=target)[0]
    assert f.name in str(e.value) and "checks='off'" in str(e.value)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        miw(root, target=target, checks="warn", nonfinite="keep")[0]  # the opt-out: loads, with a warning
    assert any(issubclass(m.category, DatasetWarning) and f.name in str(m.message) for m in w)
    miw(root, target=target, checks="off", nonfinite="keep")[0]


UNIT_SCALED = {
    "uint16 S2 digital numbers for float reflectance": ("s2", lambda a: np.rint(a * 1e4).astype(np.uint16),
                                                        "stores uint16"),
    "float S2 x 10000 for reflectance": ("s2", _rewrite(np.float32, 1e4), r"expected Sentinel-2 reflectance"),
    "S1 in dB for unit-scaled [0, 1]": ("s1", _rewrite(np.float32, 30.0, -25.0), r"expected unit-scaled"),
}


@pytest.mark.parametrize("case", list(UNIT_SCALED))
@pytest.mark.parametrize("loader", ["sen12gum", "spacenet7"])
def test_unit_scaled_loaders_units(sims, tmp_path, loader, case):
    key, fn, msg = UNIT_SCALED[case]
    make = gum if loader == "sen12gum" else sn7
    root = copy(sims, loader, tmp_path)
    f = make(root).modality_files(0)[key][0]
    damage(f, fn)
    with pytest.raises(DatasetError, match=msg) as e:
        make(root)[0]
    assert f.name in str(e.value)
    make(root, checks="off")[0]


def test_spacenet7_label_out_of_range_and_s1_above_one(sims, tmp_path):
    root = copy(sims, "spacenet7", tmp_path)
    files = sn7(root).modality_files(0)
    damage(files["mask"][0], lambda a: a.astype(np.int16) + 300)  # 300 … 555: not a 0/255 label
    with pytest.raises(DatasetError, match="building label"):
        sn7(root)[0]
    damage(files["mask"][0], lambda a: (a - 300).astype(np.uint8))
    damage(files["s1"][0], lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, 1.7, a).astype(a.dtype))
    with pytest.raises(DatasetError, match=r"\[.*1\.7\]"):
        sn7(root)[0]
    assert sn7(root, checks="off")[0]["s1"].max() <= 1  # paper normalisation clips, as the authors' loader


def test_bigearthnet_units(sims, tmp_path):
    root = copy(sims, "ben_v1", tmp_path)
    f = ben(root).modality_files(0)["s2"][3]
    damage(f, _rewrite(np.float32, 1e-4))  # float reflectance where uint16 x 10000 is expected
    with pytest.raises(DatasetError, match=rf"{f.name} stores float32; expected uint16"):
        ben(root)[0]
    ben(root, checks="off")[0]


# ------------------------------------------------------------------------------------- class 3: geometry
def _regrid(shape=None, crs=None, dx=0.0):
    def fn(path: Path):
        with rasterio.open(path) as src:
            a, t, c = src.read(), src.transform, src.crs
        if shape is not None:
            a = np.resize(a, (a.shape[0], *shape))
        write_geotiff(path, a, crs=crs or c, transform=grid_transform(t.c + dx, t.f, t.a))
    return fn


GEOMETRY = {
    "S2 band 37x91": ("s2", 1, _regrid(shape=(37, 91)), r"is 37×91; expected 120×120"),
    "S2 band in another CRS": ("s2", 4, _regrid(crs="EPSG:32632"), "expected one CRS"),
    "S2 band 50 km off": ("s2", 2, _regrid(dx=50_000.0), "expected the same 1.2 km footprint"),
    "S1 50 km off its S2 partner": ("s1", None, _regrid(dx=50_000.0), "expected the same footprint"),
    "S1 in another CRS than S2": ("s1", None, _regrid(crs="EPSG:32632"), "expected one CRS"),
}


@pytest.mark.parametrize("case", list(GEOMETRY))
def test_bigearthnet_geometry(sims, tmp_path, case):
    key, band, fn, msg = GEOMETRY[case]
    root = copy(sims, "ben_v1", tmp_path)
    files = ben(root).modality_files(0)[key]
    for f in files if band is None else [files[band]]:
        fn(f)
    with pytest.raises(DatasetError, match=msg) as e:
        ben(root)[0]
    assert str(root) in str(e.value)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ben(root, checks="warn")[0]
    assert any(issubclass(m.category, DatasetWarning) for m in w)


def test_bigearthnet_lmdb_band_shape(sims, tmp_path):
    import lmdb
    from safetensors.numpy import load, save

    root = copy(sims, "ben_lmdb", tmp_path)
    ds = ben(root, version="lmdb")
    key = ds.records[0].s2_name
    env = lmdb.open(str(root / "BigEarthNet-V2-LMDB"), lock=False)
    with env.begin(write=True) as txn:
        arrays = load(bytes(txn.get(key.encode())))
        arrays["B02"] = np.resize(arrays["B02"], (37, 91))
        txn.put(key.encode(), save(arrays))
    env.close()
    with pytest.raises(DatasetError, match=rf"{key}: band B02 is 37×91; expected 120×120"):
        ben(root, version="lmdb")[0]


def test_reordered_stack_is_refused_by_attribution(sims):
    from fusionbook.attribution.occlusion import dataset_influence
    from fusionbook.models.unet import UNet

    ds = MapInWild(sims["mapinwild"], split=None, modalities=("s1", "viirs"), target="naturalness", crop_size=16)
    good = ds.stack_layout(("s1", "viirs"))
    loader = torch.utils.data.DataLoader(
        MapInWild(sims["mapinwild"], split=None, modalities=("s1", "viirs"), target="naturalness", crop_size=16,
                  transforms=ds.stack(("viirs", "s1"))), batch_size=2)  # same 3 channels, other order
    model = UNet(3, 1, base_channels=4)
    with pytest.raises(ValueError, match="stacked as 'viirs:avg_rad' at channel 0"):
        dataset_influence(model, loader, good, ["s1", "viirs"], progress=False)
    ok = torch.utils.data.DataLoader(
        MapInWild(sims["mapinwild"], split=None, modalities=("s1", "viirs"), target="naturalness", crop_size=16,
                  transforms=ds.stack(("s1", "viirs"))), batch_size=2)
    assert len(dataset_influence(model, ok, good, ["s1", "viirs"], progress=False)) == 2
    assert default_collate([ds.stack()(ds[0])] * 2)["layout"]  # a layout survives default_collate


# ------------------------------------------------------------------------------------- class 4: metadata
def test_mapinwild_unparsable_split_id(sims, tmp_path):
    root = copy(sims, "mapinwild", tmp_path)
    split = root / "tvt_split.csv"
    df = pd.read_csv(split, index_col=0).astype(object)
    df.iloc[0, 0] = "55555abc"
    df.to_csv(split)
    with pytest.raises(DatasetError, match=r"tvt_split.csv: column 'train' holds a value that is not an id"):
        MapInWild(root, "train")


def test_sen12gum_unparsable_weight_and_contradicting_bands(sims, tmp_path):
    import json

    root = copy(sims, "sen12gum", tmp_path)
    path = root / "dallas" / "samples.json"
    meta = json.loads(path.read_text())
    good = json.dumps(meta)
    meta["samples"][0]["img_weight"] = "many"
    path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"dallas/samples.json: an 'img_weight' is not a number"):
        gum(root)
    meta = json.loads(good)
    meta["sentinel1_features"] = ["VH", "VV"]  # contradicts the GeoTIFF band descriptions (VV, VH)
    path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"describes its bands as \['VV', 'VH'\] but .*samples.json says"):
        gum(root)[0]


def test_spacenet7_unparsable_month_and_swapped_bands(sims, tmp_path):
    import json

    root = copy(sims, "spacenet7", tmp_path)
    path = root / "metadata_spacenet7_s1s2.json"
    meta = json.loads(path.read_text())
    good = json.dumps(meta)
    aoi = next(iter(meta))
    meta[aoi][0]["month"] = "June"
    path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"metadata_spacenet7_s1s2.json: AOI .* expected integer 'year' and 'month'"):
        sn7(root)
    path.write_text(good)
    f = sn7(root).modality_files(0)["s2"][0]
    with rasterio.open(f) as src:
        a, t, c = src.read(), src.transform, src.crs
    write_geotiff(f, a, crs=c, transform=t, band_names=("B4", "B3", "B2", "B8"))
    with pytest.raises(DatasetError, match=r"describes its bands as \['B4', 'B3', 'B2', 'B8'\]"):
        sn7(root)[0]


def test_bigearthnet_simulated_lists_deleted(sims, tmp_path):
    root = copy(sims, "ben_v1", tmp_path)
    (root / "patches_with_cloud_and_shadow.csv").unlink()
    (root / "patches_with_seasonal_snow.csv").unlink()
    with pytest.raises(DatasetError, match="expected its own cloud/snow lists"):
        BigEarthNetMM(root, "train")


# ---------------------------------------------------------------------------------- class 5: LMDB truncated
def test_lmdb_truncated_is_an_error_not_sigbus(sims, tmp_path):
    root = copy(sims, "ben_lmdb", tmp_path)
    mdb = root / "BigEarthNet-V2-LMDB" / "data.mdb"
    data = mdb.read_bytes()
    mdb.write_bytes(data[: len(data) // 2])
    code = ("from fusionbook.data.bigearthnet import BigEarthNetMM\n"
            f"BigEarthNetMM({str(root)!r}, split=None, version='lmdb', exclude=())[0]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, (out.returncode, out.stderr[-500:])  # a Python error, not a signal
    assert "DatasetError" in out.stderr and "data.mdb is truncated" in out.stderr
    mdb.write_bytes(b"not an lmdb" * 100)
    with pytest.raises(DatasetError, match="data.mdb is not an LMDB data file"):
        BigEarthNetMM(root, split=None, version="lmdb", exclude=())[0]


# ---------------------------------------------------------------------------- class 6: non-empty simulation
def test_simulate_bigearthnet_refuses_non_empty_folder(tmp_path):
    root = simulate_bigearthnet(tmp_path / "ben", n=2, seed=0)
    with pytest.raises(DatasetError, match="is not empty"):
        simulate_bigearthnet(root, n=3, seed=1)
    assert len(BigEarthNetMM(root, None, exclude=())) == 2  # the archive was not touched
    simulate_bigearthnet(tmp_path / "other", n=1, seed=0, exist_ok=True)
