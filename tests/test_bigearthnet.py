"""BigEarthNet-MM loaders (v1, reBEN folders, reBEN LMDB) and the simulated archive, on real and written files."""

from __future__ import annotations

import bz2
import json
import shutil
import tarfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from safetensors.numpy import load as load_safetensors

from fusionbook.data.bigearthnet import (
    BEN19_CLASSES,
    BEN43_CLASSES,
    BEN43_TO_19,
    BEN_MEAN,
    BEN_STD,
    CLOUD_LIST,
    PAPER3_ID,
    PAPER3_OOD_TEST,
    SNOW_LIST,
    BigEarthNetMM,
    encode_lmdb,
    official_patch_lists,
    open_lmdb,
    read_patch_list,
    resample_band,
    simulate_bigearthnet,
)
from fusionbook.data.io import DatasetError, MissingFileError, read_raster, write_geotiff
from fusionbook.modality import BEN_S2

PKG = Path(str(resources.files("bigearthnet_common")))
CONFIGILM = Path(str(resources.files("configilm"))) / "extra" / "mock_data" / "BENv2"
REBEN = Path(__file__).resolve().parents[1] / "data" / "reben_v2_layout"
SNOWY = "S2B_MSIL2A_20180204T94161_57_38"
WATER = "S2B_MSIL2A_20170924T93020_69_24"  # coniferous/mixed forest, transitional, peatbogs, water bodies
REBEN_S2 = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
REBEN_S1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48"
REBEN_REF_ONLY = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    "The six real v1 pairs of bigearthnet-common, extracted."
    root = tmp_path_factory.mktemp("ben_v1")
    for name in ("BigEarthNet-S1-Example.tar.bz2", "BigEarthNet-S2-Example.tar.bz2"):
        with tarfile.open(PKG / name) as tf:
            tf.extractall(root, filter="data")
    return root


@pytest.fixture
def example_copy(example, tmp_path) -> Path:
    "A writable copy of the example archive, for breaking files."
    return Path(shutil.copytree(example, tmp_path / "copy"))


def s2_dir(root: Path, name: str) -> Path:
    return root / "BigEarthNet-S2-Example" / name


def _band(path: Path, **kw) -> np.ndarray:
    return read_raster(path, count=1, **kw)[0]


# -- real v1 ---------------------------------------------------------------------------------------------
def test_v1_real_shapes_band_order_labels(example):
    ds = BigEarthNetMM(example, split=None, exclude=())
    assert len(ds) == 6
    for i in range(len(ds)):
        s = ds[i]
        assert s["s1"].shape == (2, 120, 120) and s["s1"].dtype == torch.float32
        assert s["s2"].shape == (12, 120, 120) and s["s2"].dtype == torch.float32
        assert s["label"].shape == (19,) and s["label"].dtype == torch.float32
        s1dir = example / "BigEarthNet-S1-Example" / s["s1_name"]
        vv, vh = _band(s1dir / f"{s['s1_name']}_VV.tif"), _band(s1dir / f"{s['s1_name']}_VH.tif")
        assert not np.array_equal(vv, vh)
        np.testing.assert_array_equal(s["s1"][0].numpy(), vv)  # VV first, not the sorted-name order
        np.testing.assert_array_equal(s["s1"][1].numpy(), vh)
        d = s2_dir(example, s["s2_name"])
        for k, b in enumerate(BEN_S2):
            ref = _band(d / f"{s['s2_name']}_{b}.tif", out_shape=(120, 120))
            np.testing.assert_array_equal(s["s2"][k].numpy(), ref)
        native = _band(d / f"{s['s2_name']}_B8A.tif", dtype=None)
        assert native.shape == (60, 60) and native.dtype == np.uint16
        meta = json.loads((d / f"{s['s2_name']}_labels_metadata.json").read_text())
        want = {BEN19_CLASSES.index(BEN43_TO_19[n]) for n in meta["labels"] if BEN43_TO_19[n]}
        assert set(np.flatnonzero(s["label"].numpy()).tolist()) == want
        s1meta = json.loads((s1dir / f"{s['s1_name']}_labels_metadata.json").read_text())
        assert s1meta["corresponding_s2_patch"] == s["s2_name"]
        assert s["snow"] == (s["s2_name"] == SNOWY) and s["cloud"] is False


def test_v1_real_43_classes_and_flags(example):
    ds = BigEarthNetMM(example, split=None, exclude=(), num_classes=43, modalities=("s2",))
    for i in range(len(ds)):
        s = ds[i]
        assert "s1" not in s and s["label"].shape == (43,)
        meta = json.loads((s2_dir(example, s["s2_name"]) / f"{s['s2_name']}_labels_metadata.json").read_text())
        assert [BEN43_CLASSES[j] for j in np.flatnonzero(s["label"].numpy())] == sorted(
            meta["labels"], key=BEN43_CLASSES.index)
    assert SNOWY in official_patch_lists()["snow"]
    names = set(BigEarthNetMM(example, split=None).frame()["s2_name"])
    assert len(names) == 5 and SNOWY not in names  # excluded by default
    assert SNOWY in set(BigEarthNetMM(example, split=None, exclude=("cloud",)).frame()["s2_name"])


def test_v1_official_single_column_split(example, tmp_path):
    root = Path(shutil.copytree(example, tmp_path / "r"))
    ours = {p.name for p in (root / "BigEarthNet-S2-Example").iterdir()}
    for split in ("train", "val", "test"):
        with bz2.open(PKG / f"{split}.csv.bz2", "rt") as f:
            lines = [ln.strip() for ln in f if ln.strip() in ours]
        (root / f"{split}.csv").write_text("".join(f"{n}\n" for n in lines))
    tr, te = BigEarthNetMM(root, "train"), BigEarthNetMM(root, "test")
    assert len(tr) == 4 and len(te) == 1 and len(BigEarthNetMM(root, "val")) == 0
    assert te[0]["s2_name"] == "S2A_MSIL2A_20170613T101031_87_48"
    assert te[0]["s1_name"] == "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"  # paired through the S1 json
    assert len(BigEarthNetMM(root, "validation")) == 0


def test_class_subsets_reindex(example):
    full = BigEarthNetMM(example, split=None, exclude=())
    sub = BigEarthNetMM(example, split=None, exclude=(), classes=list(reversed(PAPER3_ID)))
    assert sub.class_indices == PAPER3_ID and sub.classes == BEN19_CLASSES[2:14]
    assert len(sub) == 5 and WATER not in set(sub.frame()["s2_name"])  # peatbogs/water are OOD-test classes
    by_name = {full[i]["s2_name"]: full[i]["label"] for i in range(len(full))}
    for i in range(len(sub)):
        s = sub[i]
        assert s["label"].shape == (12,)
        np.testing.assert_array_equal(s["label"].numpy(), by_name[s["s2_name"]][list(PAPER3_ID)].numpy())
    assert len(BigEarthNetMM(example, split=None, exclude=(), classes=PAPER3_OOD_TEST)) == 0
    arable = BigEarthNetMM(example, split=None, exclude=(), classes=[2, 6])  # arable land + agriculture w/ nat.
    assert sorted(arable.frame()["s2_name"]) == ["S2A_MSIL2A_20170613T101031_87_48"]
    assert arable[0]["label"].tolist() == [1.0, 1.0]


def test_normalize_and_resampling(example):
    raw = BigEarthNetMM(example, split=None, exclude=())[0]
    norm = BigEarthNetMM(example, split=None, exclude=(), normalize=True)[0]
    for m in ("s1", "s2"):
        mean = torch.tensor(BEN_MEAN[m])[:, None, None]
        std = torch.tensor(BEN_STD[m])[:, None, None]
        torch.testing.assert_close(norm[m], (raw[m] - mean) / std)
    cubic = BigEarthNetMM(example, split=None, exclude=(), resampling="cubic")[0]
    assert torch.equal(cubic["s2"][1], raw["s2"][1])  # B02 is native 10 m
    assert not torch.equal(cubic["s2"][4], raw["s2"][4])  # B05 is resampled from 20 m
    seen = []
    BigEarthNetMM(example, split=None, exclude=(), transforms=lambda s: seen.append(s) or s)[0]
    assert len(seen) == 1


# -- errors ----------------------------------------------------------------------------------------------
def test_error_missing_band_file(example_copy):
    name = "S2A_MSIL2A_20170613T101031_87_48"
    (s2_dir(example_copy, name) / f"{name}_B05.tif").unlink()
    ds = BigEarthNetMM(example_copy, split=None, exclude=())
    with pytest.raises(MissingFileError, match=f"{name}_B05.tif"):
        ds[0]


def test_error_s1_without_s2_partner(example_copy):
    shutil.rmtree(s2_dir(example_copy, "S2A_MSIL2A_20170613T101031_87_48"))
    with pytest.raises(MissingFileError, match="S2 partner S2A_MSIL2A_20170613T101031_87_48"):
        BigEarthNetMM(example_copy, split=None)


def test_error_label_json(example_copy):
    name = "S2A_MSIL2A_20170613T101031_87_48"
    js = s2_dir(example_copy, name) / f"{name}_labels_metadata.json"
    js.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        BigEarthNetMM(example_copy, split=None, exclude=())[0]
    js.write_text(json.dumps({"labels": ["Arable land"]}))  # a 19-class name is not a v1 label
    with pytest.raises(DatasetError, match="unknown labels"):
        BigEarthNetMM(example_copy, split=None, exclude=(), classes=[2])
    js.unlink()
    with pytest.raises(MissingFileError, match="labels_metadata.json"):
        BigEarthNetMM(example_copy, split=None, exclude=())[0]


def test_error_wrong_band_count_and_corrupt_tif(example_copy):
    name = "S2A_MSIL2A_20170613T101031_87_48"
    b02 = s2_dir(example_copy, name) / f"{name}_B02.tif"
    write_geotiff(b02, np.ones((2, 120, 120), np.uint16))
    ds = BigEarthNetMM(example_copy, split=None, exclude=())
    with pytest.raises(DatasetError, match=r"has 2 band\(s\), expected 1"):
        ds[0]
    b03 = s2_dir(example_copy, name) / f"{name}_B03.tif"
    b02.unlink()
    shutil.copy(b03, b02)
    b03.write_bytes(b03.read_bytes()[:300])
    with pytest.raises(DatasetError, match=f"{name}_B03.tif"):
        BigEarthNetMM(example_copy, split=None, exclude=())[0]  # a new loader: headers are read once per loader


def test_error_unknown_split_and_class(example):
    with pytest.raises(DatasetError, match="unknown split 'training'"):
        BigEarthNetMM(example, split="training")
    with pytest.raises(DatasetError, match="unknown class index"):
        BigEarthNetMM(example, split=None, classes=[2, 19])
    with pytest.raises(DatasetError, match="unknown class index"):
        BigEarthNetMM(example, split=None, num_classes=43, classes=[-1])
    with pytest.raises(MissingFileError, match="train.csv"):
        BigEarthNetMM(example, split="train")
    with pytest.raises(ValueError, match="num_classes"):
        BigEarthNetMM(example, split=None, num_classes=20)


# -- reBEN folders and LMDB ------------------------------------------------------------------------------
def _reben_meta(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["patch_id", "s1_name", "split", "labels", "contains_seasonal_snow",
                                       "contains_cloud_or_shadow"])


@pytest.mark.skipif(not REBEN.is_dir(), reason="shared reBEN sample folder not available")
def test_v2_real_folder(tmp_path):
    # The sample folder holds S2 patch 75_43, S1 patch 70_48 and only the reference map of 26_57: no true
    # pair.  The metadata below pairs the first two to check the layout and band handling (not geography).
    meta = _reben_meta([(REBEN_S2, REBEN_S1, "train", ["Arable land", "Pastures"], False, True),
                        (REBEN_REF_ONLY, "S1B_IW_GRDH_1SDV_20170612T165809_33UUP_26_57", "test", [], False, False)])
    meta.to_parquet(tmp_path / "metadata.parquet")
    ds = BigEarthNetMM(REBEN, split="train", version="v2", exclude=(), metadata_file=tmp_path / "metadata.parquet")
    assert len(ds) == 1
    with pytest.raises(DatasetError, match=r"covers \(384000.0, 5341200.0.*expected the same footprint"):
        ds[0]  # the geometry check sees that these two real patches are not a pair
    ds = BigEarthNetMM(REBEN, split="train", version="v2", exclude=(), metadata_file=tmp_path / "metadata.parquet",
                       checks="off")
    s = ds[0]
    s2d = REBEN / "BigEarthNet-S2" / "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP" / REBEN_S2
    s1d = REBEN / "BigEarthNet-S1" / "S1A_IW_GRDH_1SDV_20170613T165043" / REBEN_S1
    assert s["s2"].shape == (12, 120, 120) and s["s1"].shape == (2, 120, 120)
    for k, b in enumerate(BEN_S2):
        np.testing.assert_array_equal(s["s2"][k].numpy(), _band(s2d / f"{REBEN_S2}_{b}.tif", out_shape=(120, 120)))
    np.testing.assert_array_equal(s["s1"][0].numpy(), _band(s1d / f"{REBEN_S1}_VV.tif"))
    np.testing.assert_array_equal(s["s1"][1].numpy(), _band(s1d / f"{REBEN_S1}_VH.tif"))
    assert np.flatnonzero(s["label"].numpy()).tolist() == [2, 4] and s["cloud"] and not s["snow"]
    assert len(BigEarthNetMM(REBEN, "train", version="v2", metadata_file=meta)) == 0  # cloudy: excluded by default
    everything = BigEarthNetMM(REBEN, None, version="v2", exclude=(), metadata_file=meta, checks="off")
    with pytest.raises(MissingFileError, match="33UUP_26_57_VV.tif"):
        everything[1]  # only a reference map exists for this patch
    assert len(BigEarthNetMM(REBEN, None, version="v2", exclude=(), metadata_file=meta, on_missing="skip")) == 1
    # the same patch encoded as the LMDB release reads identically
    db = encode_lmdb(REBEN, tmp_path / "lmdb", metadata_file=meta.iloc[:1])
    ref = BigEarthNetMM(tmp_path, None, version="lmdb", exclude=(), metadata_file=meta.iloc[:1], lmdb_path=db)[0]
    for k in ("s1", "s2", "label"):
        assert torch.equal(ref[k], s[k]), k


def test_lmdb_real_patches_and_flags():
    meta = pd.concat([pd.read_parquet(CONFIGILM / "metadata.parquet"),
                      pd.read_parquet(CONFIGILM / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")])
    ds = BigEarthNetMM(CONFIGILM, split=None, version="auto", exclude=())
    assert ds.version == "lmdb" and len(ds) == len(meta) == 24
    by_id = meta.set_index("patch_id")
    env = open_lmdb(CONFIGILM / "BigEarthNet-V2-LMDB")  # the loader's handle: LMDB forbids a second one
    for i in range(len(ds)):
        s = ds[i]
        row = by_id.loc[s["s2_name"]]
        assert s["s1_name"] == row["s1_name"]
        assert s["cloud"] == bool(row["contains_cloud_or_shadow"]) and s["snow"] == bool(row["contains_seasonal_snow"])
        assert [BEN19_CLASSES[j] for j in np.flatnonzero(s["label"].numpy())] == sorted(
            row["labels"], key=BEN19_CLASSES.index)
        assert s["s1"].shape == (2, 120, 120) and s["s2"].shape == (12, 120, 120)
        if i < 3:
            with env.begin() as txn:
                s2 = load_safetensors(txn.get(s["s2_name"].encode()))
                s1 = load_safetensors(txn.get(s["s1_name"].encode()))
            np.testing.assert_array_equal(s["s1"].numpy(), np.stack([s1["VV"], s1["VH"]]))
            assert s2["B8A"].shape == (60, 60) and s2["B09"].shape == (20, 20)
            np.testing.assert_array_equal(s["s2"][8].numpy(), resample_band(s2["B8A"]))
            np.testing.assert_array_equal(s["s2"][7].numpy(), s2["B08"].astype(np.float32))
    assert ds.frame()[["cloud", "snow"]].sum().tolist() == [3, 3]
    clean = BigEarthNetMM(CONFIGILM, split=None, version="lmdb")
    assert len(clean) == 18 and not clean.frame()[["cloud", "snow"]].any().any()
    assert {len(BigEarthNetMM(CONFIGILM, sp, version="lmdb")) for sp in ("train", "val", "test")} == {6}


def test_lmdb_errors(tmp_path):
    with pytest.raises(DatasetError, match="expected columns"):
        BigEarthNetMM(CONFIGILM, None, version="lmdb", metadata_file=pd.DataFrame({"patch_id": ["x"]}))
    meta = _reben_meta([("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_0_0",
                         "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_0_0", "test", ["Arable land"], False, False)])
    ds = BigEarthNetMM(CONFIGILM, None, version="lmdb", metadata_file=meta)
    with pytest.raises(MissingFileError, match="33UUP_0_0, found none"):
        ds[0]
    bad = meta.assign(labels=[["Non-irrigated arable land"]])
    with pytest.raises(DatasetError, match="expected 19-class names"):
        BigEarthNetMM(CONFIGILM, None, version="lmdb", metadata_file=bad)
    (tmp_path / "metadata.parquet").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable parquet"):
        BigEarthNetMM(tmp_path, None, version="v2")


# -- simulated archive -----------------------------------------------------------------------------------
def test_simulated_v1_layout_and_determinism(tree_digest, tmp_path):
    a = simulate_bigearthnet(tmp_path / "a", n=6, seed=3)
    b = simulate_bigearthnet(tmp_path / "b", n=6, seed=3)
    c = simulate_bigearthnet(tmp_path / "c", n=2, seed=4)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    name = "S2A_MSIL2A_20170613T101031_0_0"
    with rasterio.open(a / "BigEarthNet-v1.0" / name / f"{name}_B01.tif") as src:
        assert src.shape == (20, 20) and src.dtypes[0] == "uint16" and src.res == (60.0, 60.0)
    with rasterio.open(a / "BigEarthNet-v1.0" / name / f"{name}_B8A.tif") as src:
        assert src.shape == (60, 60)
    sizes = [len((a / f"{sp}.csv").read_text().splitlines()) for sp in ("train", "val", "test")]
    assert sum(sizes) == 6 and sizes == [4, 1, 1]
    full = BigEarthNetMM(a, split=None, exclude=())
    assert len(full) == 6
    flags = {k: read_patch_list(a / f) for k, f in (("cloud", CLOUD_LIST), ("snow", SNOW_LIST))}
    for i in range(len(full)):
        s = full[i]
        assert s["label"].sum() >= 1 and s["s2"].shape == (12, 120, 120)
        assert 0 < float(s["s2"].mean()) < 10000 and -40 < float(s["s1"].mean()) < 5
        assert s["cloud"] == (s["s2_name"] in flags["cloud"]) and s["snow"] == (s["s2_name"] in flags["snow"])
    assert sum(len(BigEarthNetMM(a, sp, exclude=())) for sp in ("train", "val", "test")) == 6
    n_flag = len(flags["cloud"] | flags["snow"])
    assert len(BigEarthNetMM(a, split=None)) == 6 - n_flag


def test_simulated_v2_and_lmdb_agree(tmp_path):
    v2 = simulate_bigearthnet(tmp_path / "v2", n=5, seed=1, version="v2")
    db = simulate_bigearthnet(tmp_path / "db", n=5, seed=1, version="lmdb")
    meta = pd.read_parquet(v2 / "metadata.parquet")
    assert len(meta) == 5 and set(meta["split"]) <= {"train", "validation", "test"}
    ds, dl = BigEarthNetMM(v2, None, version="auto", exclude=()), BigEarthNetMM(db, None, version="auto", exclude=())
    assert (ds.version, dl.version) == ("v2", "lmdb") and len(ds) == len(dl) == 5
    for i in range(5):
        x, y = ds[i], dl[i]
        assert x["s2_name"] == y["s2_name"]
        for k in ("s1", "s2", "label"):
            assert torch.equal(x[k], y[k]), k
    ref = next((v2 / "Reference_Maps").rglob("*_reference_map.tif"))
    with rasterio.open(ref) as src:
        assert src.shape == (120, 120) and set(np.unique(src.read(1))) <= {c for c in range(111, 524)}


def test_simulator_arguments(tmp_path):
    with pytest.raises(ValueError, match="splits"):
        simulate_bigearthnet(tmp_path, n=2, splits=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="version"):
        simulate_bigearthnet(tmp_path, n=2, version="v3")


# -- files per modality ----------------------------------------------------------------------------------
def test_modality_files_one_per_band_in_band_order(example):
    ds = BigEarthNetMM(example, split=None, exclude=())
    for i in range(len(ds)):
        s, files = ds[i], ds.modality_files(i)
        assert list(files) == ["s1", "s2"]
        assert [f.name for f in files["s2"]] == [f"{s['s2_name']}_{b}.tif" for b in BEN_S2]
        assert [f.name for f in files["s1"]] == [f"{s['s1_name']}_{b}.tif" for b in ("VV", "VH")]
        assert all(f.is_file() for fs in files.values() for f in fs)
        for k, f in enumerate(files["s2"]):  # the sample's channel k is the k-th file, resampled
            np.testing.assert_array_equal(s["s2"][k].numpy(), _band(f, out_shape=(120, 120)))
    assert list(BigEarthNetMM(example, None, exclude=(), modalities=("s2",)).modality_files(0)) == ["s2"]


def test_modality_files_v2_and_lmdb_error(tmp_path):
    root = simulate_bigearthnet(tmp_path / "v2", n=2, version="v2")
    v2 = BigEarthNetMM(root, None, version="v2", exclude=())
    f = v2.modality_files(1)
    assert [p.name for p in f["s2"]] == [f"{v2.records[1].s2_name}_{b}.tif" for b in BEN_S2]
    assert f["s1"][0].parent.parent.parent.name == "BigEarthNet-S1"
    encode_lmdb(root)
    lm = BigEarthNetMM(root, None, version="lmdb", exclude=())
    with pytest.raises(DatasetError, match="LMDB encoding .* no per-modality files"):
        lm.modality_files(0)
