"""SEN12_GUM loader: hand-written fixtures, the simulated layout, errors and determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionbook.data.io import DatasetError, MissingFileError, grid_transform, write_geotiff
from fusionbook.data.sen12gum import (
    S2_FEATURES,
    SEN12GUM,
    TEST_FOLDER,
    TRAIN_SITES,
    VALIDATION_SITES,
    modality_path,
    patch_id,
)
from fusionbook.modality import PAPER4_S2_BANDS, S2_10

SIZE = 32


def _write_patch(root: Path, site: str, pid: str, *, s2_bands: int = 10, labeled: bool = True, size: int = SIZE,
                 b_transform=None) -> int:
    t = grid_transform()
    s1 = np.full((2, size, size), 0.25, np.float32)
    s1[1] = 0.75
    s1[0, 0, 0] = np.nan
    write_geotiff(modality_path(root, site, "sentinel1", pid), s1, transform=t)
    s2 = np.broadcast_to((np.arange(s2_bands, dtype=np.float32) / 100)[:, None, None], (s2_bands, size, size))
    write_geotiff(modality_path(root, site, "sentinel2", pid), s2.copy(), transform=t)
    b = np.zeros((size, size), np.uint8)
    b[:4, :8] = 1
    if labeled:
        write_geotiff(modality_path(root, site, "buildings", pid), b, transform=b_transform or t)
    return int(b.sum())


def _site(root: Path, site: str, n: int, unlabeled: int = 0) -> None:
    samples = []
    for i in range(n + unlabeled):
        pid = patch_id(0, i * SIZE)
        lab = i < n
        w = _write_patch(root, site, pid, labeled=lab)
        samples.append(dict(site=site, patch_id=pid, is_labeled=lab, img_weight=w if lab else -1))
    meta = dict(label="buildings", site=site, patch_size=SIZE, max_x=(n + unlabeled - 1) * SIZE, max_y=0,
                sentinel1_features=["VV", "VH"], sentinel2_features=list(S2_FEATURES), samples=samples)
    (root / site / "samples.json").write_text(json.dumps(meta))


def _test_folder(root: Path, aois=("L15-0387E-1276N_1549_3087_13", "L15-0434E-1218N_1736_3318_13")) -> None:
    for a in aois:
        _write_patch(root, TEST_FOLDER, a, size=40)
    meta = dict(label="buildings", sentinel1_features=["VV", "VH"], sentinel2_features=list(S2_FEATURES),
                group_names={"1": "NA_AU"}, samples=[dict(aoi_id=a, group=1, country="x", month=1, year=2020)
                                                     for a in aois])
    (root / TEST_FOLDER / "samples.json").write_text(json.dumps(meta))
    (root / TEST_FOLDER / "spacenet7_regions.json").write_text(
        json.dumps(dict(data={a: 1 for a in aois}, regions={"1": "NA_AU"})))


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    _site(tmp_path, "dallas", 2, unlabeled=1)
    _site(tmp_path, "sydney", 1)
    _site(tmp_path, "calgary", 1)
    _test_folder(tmp_path)
    return tmp_path


def test_site_constants():
    assert len(TRAIN_SITES) == 26 and len(VALIDATION_SITES) == 4
    assert "sydney" in TRAIN_SITES and "newyork" in VALIDATION_SITES


def test_minimal_train_sample(minimal: Path):
    ds = SEN12GUM(minimal, "train")
    assert ds.sites == ("dallas", "sydney") and len(ds) == 3
    x = ds[0]
    assert x["s1"].shape == (2, SIZE, SIZE) and x["s1"].dtype == torch.float32
    assert x["s1"][0, 0, 0] == 0 and x["s1"][1, 3, 3] == 0.75  # NaN → 0
    # default bands B2, B3, B4, B8 = positions 0, 1, 2, 6 of the 10-band file
    assert torch.allclose(x["s2"][:, 0, 0], torch.tensor([0.0, 0.01, 0.02, 0.06]))
    assert x["mask"].shape == (1, SIZE, SIZE) and x["mask"].sum() == 32 and x["mask"].max() == 1
    assert (x["site"], x["patch_id"], x["img_weight"], x["is_labeled"]) == ("dallas", patch_id(0, 0), 32.0, True)
    assert ds.img_weights.tolist() == [32.0, 32.0, 32.0]
    val = SEN12GUM(minimal, "validation")
    assert val.sites == ("calgary",) and len(val) == 1


def test_band_and_modality_selection(minimal: Path):
    ds = SEN12GUM(minimal, "train", s2_bands=S2_10, modalities=("s2",))
    x = ds[0]
    assert "s1" not in x and x["s2"].shape == (10, SIZE, SIZE)
    assert torch.allclose(x["s2"][:, 1, 1], torch.arange(10, dtype=torch.float32) / 100)
    assert SEN12GUM(minimal, "train", modalities=("s1",))[0].keys() >= {"s1", "mask"}
    with pytest.raises(DatasetError, match="s2_bands"):
        SEN12GUM(minimal, "train", s2_bands=("B1",))
    with pytest.raises(DatasetError, match="modalities"):
        SEN12GUM(minimal, "train", modalities=("s3",))


def test_unlabeled_and_split_none(minimal: Path):
    ds = SEN12GUM(minimal, "train", only_labeled=False)
    assert len(ds) == 4
    u = ds[2]
    assert u["is_labeled"] is False and u["img_weight"] == -1 and u["mask"].sum() == 0
    everything = SEN12GUM(minimal, None)
    assert everything.sites == ("calgary", "dallas", TEST_FOLDER, "sydney") and len(everything) == 6


def test_test_split_whole_aois(minimal: Path):
    ds = SEN12GUM(minimal, "test")
    assert len(ds) == 2
    x = ds[1]
    assert x["s1"].shape == (2, 40, 40) and x["site"] == TEST_FOLDER and x["aoi_id"] == x["patch_id"]
    assert ds.regions[x["aoi_id"]] == "NA_AU"
    one = SEN12GUM(minimal, "test", sites=["L15-0434E-1218N_1736_3318_13"])
    assert len(one) == 1
    with pytest.raises(DatasetError, match="unknown test AOI"):
        SEN12GUM(minimal, "test", sites=["L15-nowhere"])


def test_crops_deterministic(minimal: Path):
    ds = SEN12GUM(minimal, "test", crop_size=16, seed=1)
    a, b = ds[0], ds[0]
    assert a["s2"].shape == (4, 16, 16) and a["mask"].shape == (1, 16, 16)
    assert all(torch.equal(a[k], b[k]) for k in ("s1", "s2", "mask"))
    with pytest.raises(DatasetError, match="larger than"):
        SEN12GUM(minimal, "train", crop_size=SIZE + 1)[0]


def test_errors(minimal: Path):
    with pytest.raises(DatasetError, match="split must be"):
        SEN12GUM(minimal, "val")
    with pytest.raises(DatasetError, match="unknown train site 'calgary'"):
        SEN12GUM(minimal, "train", sites=["calgary"])
    with pytest.raises(MissingFileError, match="site 'denver'"):
        SEN12GUM(minimal, "train", sites=["denver"])
    # wrong band count
    pid = patch_id(0, 0)
    _write_patch(minimal, "dallas", pid, s2_bands=4)
    with pytest.raises(DatasetError, match=r"sentinel2_dallas_.*has 4 band\(s\), expected 10"):
        SEN12GUM(minimal, "train")[0]
    # grid mismatch between modalities
    _write_patch(minimal, "dallas", pid, b_transform=grid_transform(x0=0))
    with pytest.raises(DatasetError, match="expected the same grid"):
        SEN12GUM(minimal, "train")[0]
    # shape mismatch
    _write_patch(minimal, "dallas", pid)
    write_geotiff(modality_path(minimal, "dallas", "sentinel1", pid), np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DatasetError, match="expected the same shape"):
        SEN12GUM(minimal, "train")[0]
    # corrupt
    p = modality_path(minimal, "dallas", "sentinel1", pid)
    p.write_bytes(b"II*\x00garbage")
    with pytest.raises(DatasetError, match=p.name):
        SEN12GUM(minimal, "train")[0]
    # missing file / folder
    p.unlink()
    with pytest.raises(MissingFileError, match="sentinel1 of dallas"):
        SEN12GUM(minimal, "train")
    shutil.rmtree(minimal / "sydney" / "sentinel2")
    with pytest.raises(MissingFileError, match="sentinel2 folder of 'sydney'"):
        SEN12GUM(minimal, "train", sites=["sydney"])


def test_samples_json_errors(minimal: Path):
    meta = json.loads((minimal / "calgary" / "samples.json").read_text())
    bad = dict(meta, sentinel2_features=["B2", "B3"])
    (minimal / "calgary" / "samples.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="lack"):
        SEN12GUM(minimal, "validation")
    del bad["samples"]
    (minimal / "calgary" / "samples.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="missing field"):
        SEN12GUM(minimal, "validation")
    (minimal / "calgary" / "samples.json").write_text(json.dumps(dict(meta, site="newyork")))
    with pytest.raises(DatasetError, match="folder is 'calgary'"):
        SEN12GUM(minimal, "validation")
    (minimal / "calgary" / "samples.json").unlink()
    with pytest.raises(MissingFileError, match="samples.json"):
        SEN12GUM(minimal, "validation")
    with pytest.raises(MissingFileError, match="test folder"):
        SEN12GUM(minimal / "dallas", "test")


def test_paper4_bands_default():
    assert PAPER4_S2_BANDS == ("B2", "B3", "B4", "B8")


# --- the simulated layout ---------------------------------------------------------------------------------

from fusionbook.data.scene import SceneKnobs  # noqa: E402
from fusionbook.data.sen12gum import read_samples_json, simulate_sen12gum  # noqa: E402
from fusionbook.data.spacenet7 import unit_scale_db  # noqa: E402


def test_simulated_layout_and_loader(tmp_path: Path):
    root = simulate_sen12gum(tmp_path / "s", n=7, patch_size=32, test_aois=2)
    sim = json.loads((root / "simulation.json").read_text())
    assert sum(sim["sites"].values()) == 7 and len(sim["sites"]) == 5
    tr, va, te = (SEN12GUM(root, s) for s in ("train", "validation", "test"))
    assert len(tr) + len(va) == 7 and len(te) == 2 and len(tr.sites) == 3 and len(va.sites) == 2
    assert len(SEN12GUM(root, None)) == 9
    for ds in (tr, va):
        for i in range(len(ds)):
            x = ds[i]
            assert x["s1"].shape == (2, 32, 32) and x["s2"].shape == (4, 32, 32) and x["mask"].shape == (1, 32, 32)
            assert 0 <= x["s1"].min() and x["s1"].max() <= 1 and 0 <= x["s2"].min() and x["s2"].max() <= 1
            assert x["img_weight"] == x["mask"].sum().item()
    meta = read_samples_json(root / tr.sites[0])
    assert meta["patch_size"] == 32 and meta["sentinel1_features"] == ["VV", "VH"]
    assert meta["max_x"] == max(int(s["patch_id"].split("-")[1]) for s in meta["samples"])
    assert all(len(s["patch_id"]) == 21 for s in meta["samples"])
    x = te[0]
    assert x["s1"].shape == (2, 40, 40) and x["aoi_id"] in te.regions
    # the ten S2 bands are all present, dtype float32; buildings uint8
    import rasterio

    with rasterio.open(modality_path(root, tr.sites[0], "sentinel2", meta["samples"][0]["patch_id"])) as src:
        assert src.count == 10 and src.dtypes[0] == "float32" and src.descriptions == S2_FEATURES
    with rasterio.open(modality_path(root, tr.sites[0], "buildings", meta["samples"][0]["patch_id"])) as src:
        assert src.dtypes[0] == "uint8"


def test_simulated_is_byte_identical_and_seeded(tree_digest, tmp_path: Path):
    kw = dict(n=3, patch_size=32, test_aois=1)
    a = simulate_sen12gum(tmp_path / "a", seed=2, **kw)
    b = simulate_sen12gum(tmp_path / "b", seed=2, **kw)
    c = simulate_sen12gum(tmp_path / "c", seed=3, **kw)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    with pytest.raises(DatasetError, match="not empty"):
        simulate_sen12gum(a, seed=2, **kw)


def test_simulated_sites_and_knobs(tmp_path: Path):
    root = simulate_sen12gum(tmp_path / "k", n=2, sites=["dallas"], patch_size=32, test_aois=0,
                             knobs=SceneKnobs(urban_fraction=0.5))
    ds = SEN12GUM(root, "train")
    assert ds.sites == ("dallas",) and len(ds) == 2 and ds.img_weights.sum() > 0
    assert not (root / TEST_FOLDER).exists()
    with pytest.raises(MissingFileError, match="at least one of the site folders"):
        SEN12GUM(root, "validation")
    with pytest.raises(DatasetError, match="unknown"):
        simulate_sen12gum(tmp_path / "x", sites=["gotham"])
    with pytest.raises(DatasetError, match="patch_size"):
        simulate_sen12gum(tmp_path / "x", patch_size=8)


def test_unit_scale_db():
    db = np.array([-40.0, -25.0, -10.0, 5.0, 12.0], np.float32)
    assert np.allclose(unit_scale_db(db), [0.0, 0.0, 0.5, 1.0, 1.0])


def test_modality_files(minimal: Path):
    ds = SEN12GUM(minimal, "train", only_labeled=False)
    assert [sorted(ds.modality_files(i)) for i in range(len(ds))] == [["mask", "s1", "s2"]] * 2 + [["s1", "s2"]] + \
        [["mask", "s1", "s2"]]  # the unlabelled dallas patch has no mask file
    f = ds.modality_files(0)
    assert f == {"s1": [modality_path(minimal, "dallas", "sentinel1", patch_id(0, 0))],
                 "s2": [modality_path(minimal, "dallas", "sentinel2", patch_id(0, 0))],
                 "mask": [modality_path(minimal, "dallas", "buildings", patch_id(0, 0))]}
    assert list(SEN12GUM(minimal, "train", modalities=("s2",)).modality_files(0)) == ["s2", "mask"]
    test = SEN12GUM(minimal, "test").modality_files(1)
    assert test["s1"][0].name == "sentinel1_L15-0434E-1218N_1736_3318_13.tif"
