"""Band statistics: the file-list form and the loader form on every simulated dataset, against numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from fusionbook.data.bigearthnet import BigEarthNetMM, simulate_bigearthnet
from fusionbook.data.io import DatasetError, write_geotiff
from fusionbook.data.mapinwild import MapInWild, simulate_mapinwild
from fusionbook.data.sen12gum import SEN12GUM, simulate_sen12gum
from fusionbook.data.spacenet7 import SpaceNet7S1S2, simulate_spacenet7
from fusionbook.data.stats import compute_band_stats, modality_file_groups
from fusionbook.modality import BEN_S2, MAPINWILD, S1_BANDS, S2_10, SPACENET7


def _valid(path: Path) -> np.ndarray:
    "(C, N) float64 pixels of ``path`` with the file's nodata and NaN as NaN (read by rasterio, not xarray)."
    with rasterio.open(path) as src:
        a = src.read(masked=True).astype("float64").filled(np.nan)
    return a.reshape(a.shape[0], -1)


def _expected(files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.concatenate([_valid(f) for f in files], axis=1)
    return np.isfinite(v).sum(1), np.nanmean(v, 1), np.nanstd(v, 1)


def _check(table, files: list[Path], bands) -> None:
    n, mean, std = _expected(files)
    assert table["band"].tolist() == list(bands)
    assert table["count"].tolist() == n.tolist()
    np.testing.assert_allclose(table["mean"], mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(table["std"], std, rtol=1e-9, atol=1e-9)


def test_file_list_form_with_nodata_and_nan(tmp_path: Path):
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        a = rng.normal(50, 10, (2, 40, 24)).astype("float32")
        a[:, i : i + 3, :4] = -1
        a[1, 0, -1] = np.nan
        files.append(write_geotiff(tmp_path / f"{i}.tif", a, nodata=-1))
    _check(compute_band_stats(files, band_names=["VV", "VH"], chunks=16), files, ["VV", "VH"])
    ddof1 = compute_band_stats(files, ddof=1)
    v = np.concatenate([_valid(f) for f in files], axis=1)
    np.testing.assert_allclose(ddof1["std"], np.nanstd(v, 1, ddof=1), rtol=1e-9)
    assert ddof1["band"].tolist() == ["band1", "band2"]
    with pytest.raises(DatasetError, match="need a loader"):
        compute_band_stats(files, "s1")


def test_mapinwild_every_modality_and_target(tmp_path: Path):
    root = simulate_mapinwild(tmp_path / "mw", n=4, seed=2, tile_size=48, splits=(0.5, 0.25, 0.25))
    ds = MapInWild(root, "train", target="naturalness")
    assert len(ds) == 2
    for m in ("s2", "s1", "worldcover", "viirs", "target"):
        files = [ds.modality_files(i)[m][0] for i in range(len(ds))]
        bands = MAPINWILD[m].bands if m in MAPINWILD.modalities else ("target",)
        _check(compute_band_stats(ds, m, chunks=32), files, bands)
    # WorldCover no-data (0) and the NaN of the naturalness index are excluded
    wc = compute_band_stats(ds, "worldcover")
    assert wc["count"][0] == sum(int((_valid(ds.modality_files(i)["worldcover"][0]) > 0).sum()) for i in range(2))
    assert compute_band_stats(ds, "s1", indices=[1])["count"][0] == 48 * 48


def test_bigearthnet_per_band_file_groups(tmp_path: Path):
    ds = BigEarthNetMM(simulate_bigearthnet(tmp_path / "ben", n=3, seed=1), split=None, exclude=())
    groups = modality_file_groups(ds, "s2")
    assert len(groups) == len(BEN_S2) and all(len(g) == 3 for g in groups)
    st = compute_band_stats(ds, "s2")
    assert st["band"].tolist() == list(BEN_S2)
    for k, band in enumerate(BEN_S2):  # every band on its own, at its native size
        _check(st.iloc[[k]], groups[k], [band])
    assert st.set_index("band")["count"][["B01", "B05", "B02"]].tolist() == [3 * 20**2, 3 * 60**2, 3 * 120**2]
    s1 = compute_band_stats(ds, "s1")
    for k, g in enumerate(modality_file_groups(ds, "s1")):
        _check(s1.iloc[[k]], g, [S1_BANDS[k]])


def test_sen12gum_and_spacenet7(tmp_path: Path):
    gum = SEN12GUM(simulate_sen12gum(tmp_path / "gum", n=4, patch_size=32, test_aois=0), "train")
    files = [gum.modality_files(i)["s2"][0] for i in range(len(gum))]
    _check(compute_band_stats(gum, "s2"), files, S2_10)  # every band of the file, not only s2_bands
    _check(compute_band_stats(gum, "mask"), [gum.modality_files(i)["mask"][0] for i in range(len(gum))], ["mask"])

    sn7 = SpaceNet7S1S2(simulate_spacenet7(tmp_path / "sn7", aois=["L15-0387E-1276N_1549_3087_13"], size=32,
                                           months=6, availability={}, knobs={"missing_optical_rate": 0.5}),
                        "test", crop_size=None)
    have = [f for i in range(len(sn7)) for f in sn7.modality_files(i)["s2"]]
    assert 0 < len(have) < len(sn7) == 6
    _check(compute_band_stats(sn7, "s2"), have, SPACENET7["s2"].bands)  # months without S2 are skipped
    _check(compute_band_stats(sn7, "s1"), [sn7.modality_files(i)["s1"][0] for i in range(len(sn7))], S1_BANDS)


def test_loader_errors(tmp_path: Path):
    root = simulate_mapinwild(tmp_path / "mw", n=2, seed=0, tile_size=16, splits=(1, 0, 0))
    ds = MapInWild(root, "train", modalities=("s1",))
    with pytest.raises(DatasetError, match="pass modality="):
        compute_band_stats(ds)
    with pytest.raises(DatasetError, match="has no modality 'viirs'"):
        compute_band_stats(ds, "viirs")
    with pytest.raises(DatasetError, match="pass band_names="):
        compute_band_stats(ds, "s1", band_names=["VV"])
    assert compute_band_stats(ds, "s1", band_names=["a", "b"])["band"].tolist() == ["a", "b"]
    lm = BigEarthNetMM(simulate_bigearthnet(tmp_path / "lm", n=2, version="lmdb"), None, version="lmdb", exclude=())
    with pytest.raises(DatasetError, match="no per-modality files"):
        compute_band_stats(lm, "s2")
