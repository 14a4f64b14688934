"""SpaceNet7-S1S2 loader: hand-written fixtures, the simulated layout, errors and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionbook.data.io import DatasetError, MissingFileError, grid_transform, write_geotiff
from fusionbook.data.spacenet7 import (
    PAPER5_S2_ORDER,
    SPLITS,
    TEST_AOIS,
    TRAIN_AOIS,
    VALIDATION_AOIS,
    SpaceNet7S1S2,
    availability_table,
    label_path,
    load_metadata,
    parse_metadata,
    real_metadata_path,
    sentinel1_path,
    sentinel2_path,
)

AOI = TRAIN_AOIS[0]
AOI2 = TRAIN_AOIS[1]


def _ts(aoi, year, month, s1=True, s2=True, label=True, mask=False, spelling="real"):
    if spelling == "real":
        return dict(aoi_id=aoi, year=year, month=month, s1=s1, s2=s2, buildings=label, masked=mask)
    return dict(aoi_id=aoi, year=year, month=month, sentinel1=s1, sentinel2=s2, label=label, mask=mask)


def _write_month(root: Path, aoi: str, year: int, month: int, *, s2=True, size=32, s1_value=0.5,
                 s2_value=None, s1_bands=2, s2_bands=4, label_transform=None):
    t = grid_transform(res=4.77)
    s1 = np.full((s1_bands, size, size), s1_value, np.float32)
    s1[0, 0, 0] = np.nan
    s1[1, 0, 1] = 1.0  # values above 1 are refused by the value checks (tests/test_damaged_inputs.py)
    write_geotiff(sentinel1_path(root, aoi, year, month), s1, transform=t)
    if s2:
        v = (np.arange(s2_bands, dtype=np.float32)[:, None, None] + 1) / 10 if s2_value is None else s2_value
        write_geotiff(sentinel2_path(root, aoi, year, month), np.broadcast_to(v, (s2_bands, size, size)).copy(),
                      transform=t)
    lbl = np.zeros((size, size), np.uint8)
    lbl[: size // 2, : size // 4] = 255
    write_geotiff(label_path(root, aoi, year, month), lbl, transform=label_transform or t)


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    """Two AOIs; months: complete, missing S2, masked, no label, complete."""
    meta = {
        AOI: [_ts(AOI, 2018, 1), _ts(AOI, 2018, 2, s2=False), _ts(AOI, 2018, 3, mask=True),
              _ts(AOI, 2018, 4, label=False), _ts(AOI, 2018, 5)],
        AOI2: [_ts(AOI2, 2019, 12)],
    }
    for aoi, ts in meta.items():
        for t in ts:
            _write_month(tmp_path, aoi, t["year"], t["month"], s2=t["s2"])
    (tmp_path / "metadata_spacenet7_s1s2.json").write_text(json.dumps(meta))
    return tmp_path


def test_split_constants():
    assert (len(TRAIN_AOIS), len(VALIDATION_AOIS), len(TEST_AOIS)) == (31, 15, 14)
    assert len(set(TRAIN_AOIS) | set(VALIDATION_AOIS) | set(TEST_AOIS)) == 60
    assert SPLITS["test"][0] == "L15-0387E-1276N_1549_3087_13"
    assert SPLITS["test"][-1] == "L15-1848E-0793N_7394_5018_13"


def test_minimal_selection_and_missing_optical(minimal: Path):
    ds = SpaceNet7S1S2(minimal, "train", crop_size=None)
    assert [(s.aoi_id, s.month) for s in ds.samples] == [(AOI, 1), (AOI, 2), (AOI, 5), (AOI2, 12)]
    assert ds.missing_optical.tolist() == [False, True, False, False]
    x = ds[0]
    assert x["s1"].shape == (2, 32, 32) and x["s1"].dtype == torch.float32
    assert x["s1"][0, 0, 0] == 0 and x["s1"][1, 0, 1] == 1  # NaN → 0 (nonfinite='zero' by default)
    assert torch.allclose(x["s2"][:, 5, 5], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert x["mask"].shape == (1, 32, 32) and set(x["mask"].unique().tolist()) == {0.0, 1.0}
    assert x["mask"].sum() == 16 * 8 and x["missing_optical"] is False
    assert (x["aoi_id"], x["year"], x["month"]) == (AOI, 2018, 1)
    m = ds[1]
    assert m["missing_optical"] is True and m["s2"].shape == (4, 32, 32) and (m["s2"] == 0).all()
    assert ds.files(1).keys() == {"sentinel1", "label"}
    complete = SpaceNet7S1S2(minimal, "train", crop_size=None, include_incomplete=False)
    assert len(complete) == 3 and not complete.missing_optical.any()


def test_s2_order_paper5(minimal: Path):
    ds = SpaceNet7S1S2(minimal, "train", crop_size=None, s2_order=PAPER5_S2_ORDER)
    assert torch.allclose(ds[0]["s2"][:, 0, 0], torch.tensor([0.3, 0.2, 0.1, 0.4]))  # B4, B3, B2, B8
    assert ds[1]["s2"].shape == (4, 32, 32)
    with pytest.raises(DatasetError, match="s2_order"):
        SpaceNet7S1S2(minimal, "train", s2_order=("B4", "B4"))
    with pytest.raises(DatasetError, match="s2_order"):
        SpaceNet7S1S2(minimal, "train", s2_order=("B5",))


def test_spec_flag_spelling_and_flagless_variant(minimal: Path):
    real = json.loads((minimal / "metadata_spacenet7_s1s2.json").read_text())
    spec = {a: [_ts(a, t["year"], t["month"], t["s1"], t["s2"], t["buildings"], t["masked"], "spec") for t in ts]
            for a, ts in real.items()}
    (minimal / "metadata_spacenet7_s1s2.json").unlink()
    (minimal / "metadata.json").write_text(json.dumps(spec))  # the other accepted name
    ds = SpaceNet7S1S2(minimal, "train", crop_size=None)
    assert ds.missing_optical.tolist() == [False, True, False, False]
    # variant without s1/s2 flags (like metadata_train.json): the files decide
    flagless = {a: [dict(aoi_id=a, index=i, year=t["year"], month=t["month"], label=t["buildings"], mask=t["masked"])
                    for i, t in enumerate(ts)] for a, ts in real.items()}
    (minimal / "variant.json").write_text(json.dumps(flagless))
    ds2 = SpaceNet7S1S2(minimal, "train", crop_size=None, metadata=minimal / "variant.json")
    assert ds2.missing_optical.tolist() == [False, True, False, False]


def test_crops_are_windows_and_deterministic(minimal: Path):
    ds = SpaceNet7S1S2(minimal, "train", crop_size=16, seed=3)
    a, b = ds[0], ds[0]
    assert a["s1"].shape == (2, 16, 16) and a["s2"].shape == (4, 16, 16) and a["mask"].shape == (1, 16, 16)
    assert all(torch.equal(a[k], b[k]) for k in ("s1", "s2", "mask"))
    full = SpaceNet7S1S2(minimal, "train", crop_size=None)[0]["mask"][0]
    # the crop is a window of the full label: find it
    crops = {tuple(ds[0]["mask"][0].flatten().tolist())}
    found = any(tuple(full[r:r + 16, c:c + 16].flatten().tolist()) in crops for r in range(17) for c in range(17))
    assert found
    seen = set()
    for e in range(8):
        ds.set_epoch(e)
        seen.add(ds[0]["mask"].sum().item())
    assert len(seen) > 1  # new positions every epoch
    with pytest.raises(DatasetError, match="larger than"):
        SpaceNet7S1S2(minimal, "train", crop_size=64)[0]


def test_split_and_aoi_selection(minimal: Path):
    assert SpaceNet7S1S2(minimal, "train", aois=[AOI2]).aois == (AOI2,)
    assert len(SpaceNet7S1S2(minimal, None, crop_size=None)) == 4
    with pytest.raises(DatasetError, match="split must be"):
        SpaceNet7S1S2(minimal, "training")
    with pytest.raises(DatasetError, match="unknown AOI"):
        SpaceNet7S1S2(minimal, "train", aois=[TEST_AOIS[0]])
    with pytest.raises(DatasetError, match="not listed"):
        SpaceNet7S1S2(minimal, "train", aois=[TRAIN_AOIS[5]])
    with pytest.raises(DatasetError, match="none of the 14 test AOIs"):
        SpaceNet7S1S2(minimal, "test")
    with pytest.raises(DatasetError, match="crop_size"):
        SpaceNet7S1S2(minimal, "train", crop_size=0)


def test_errors_name_file_and_expectation(minimal: Path):
    # wrong band count
    _write_month(minimal, AOI, 2018, 5, s2_bands=3)
    with pytest.raises(DatasetError, match=r"sentinel2_.*2018_05.tif has 3 band\(s\), expected 4"):
        SpaceNet7S1S2(minimal, "train", crop_size=None)[2]
    # mismatched grid between modalities
    _write_month(minimal, AOI, 2018, 5, label_transform=grid_transform(x0=0, res=4.77))
    with pytest.raises(DatasetError, match="expected the same grid"):
        SpaceNet7S1S2(minimal, "train", crop_size=None)[2]
    # mismatched shape
    _write_month(minimal, AOI, 2018, 5)
    write_geotiff(sentinel1_path(minimal, AOI, 2018, 5), np.zeros((2, 16, 16), np.float32),
                  transform=grid_transform(res=4.77))
    with pytest.raises(DatasetError, match="expected the same shape"):
        SpaceNet7S1S2(minimal, "train", crop_size=None)[2]
    # corrupt tif
    p = sentinel1_path(minimal, AOI, 2018, 5)
    p.write_bytes(b"II*\x00garbage")
    with pytest.raises(DatasetError, match=p.name):
        SpaceNet7S1S2(minimal, "train", crop_size=None)[2]
    # missing file the metadata promises
    p.unlink()
    with pytest.raises(MissingFileError, match="Sentinel-1 image of .* 2018-05"):
        SpaceNet7S1S2(minimal, "train")
    sentinel2_path(minimal, AOI, 2018, 1).unlink()
    _write_month(minimal, AOI, 2018, 5)
    with pytest.raises(MissingFileError, match="Sentinel-2 image of .* 2018-01"):
        SpaceNet7S1S2(minimal, "train")


def test_missing_folder_and_metadata(minimal: Path):
    import shutil

    shutil.rmtree(minimal / "train" / AOI2 / "labels_raster")
    with pytest.raises(MissingFileError, match="building-label folder"):
        SpaceNet7S1S2(minimal, "train")
    (minimal / "metadata_spacenet7_s1s2.json").unlink()
    with pytest.raises(MissingFileError, match="metadata_spacenet7_s1s2.json or metadata.json"):
        SpaceNet7S1S2(minimal, "train")
    (minimal / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        SpaceNet7S1S2(minimal, "train")
    with pytest.raises(MissingFileError, match="root"):
        SpaceNet7S1S2(minimal / "nope", "train")


def test_parse_metadata_errors():
    with pytest.raises(DatasetError, match="missing flag 'label' or 'buildings'"):
        parse_metadata({AOI: [dict(year=2018, month=1, s1=True, s2=True, masked=False)]})
    with pytest.raises(DatasetError, match="month 13"):
        parse_metadata({AOI: [dict(year=2018, month=13, label=True, mask=False)]})
    with pytest.raises(DatasetError, match="true/false"):
        parse_metadata({AOI: [dict(year=2018, month=1, label="yes", mask=False)]})
    with pytest.raises(DatasetError, match="non-empty"):
        parse_metadata({})


def test_real_availability_matches_paper():
    path = real_metadata_path()
    if path is None:
        pytest.skip("real SpaceNet7-S1S2 metadata not available beside the checkout")
    meta = load_metadata(path)
    assert len(meta) == 80 and sum(map(len, meta.values())) == 1889
    tab = availability_table(meta)
    assert tab.loc["train", "selected"] == 591  # paper 5: 591 training samples
    assert tab["aois"].tolist() == [31, 15, 14]
    assert 0.10 < tab.loc["test", "share_without_s2"] < 0.14  # paper 5: ~12 % of test timestamps miss S2


def test_collate_with_dataloader(minimal: Path):
    ds = SpaceNet7S1S2(minimal, "train", crop_size=16)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["s1"].shape == (4, 2, 16, 16) and batch["missing_optical"].tolist() == [False, True, False, False]


# --- the simulated layout ---------------------------------------------------------------------------------

from fusionbook.data.scene import SceneKnobs  # noqa: E402
from fusionbook.data.spacenet7 import METADATA_NAMES, simulate_spacenet7, split_of  # noqa: E402

REAL = real_metadata_path()


def test_simulated_default_spreads_over_splits(tmp_path: Path):
    root = simulate_spacenet7(tmp_path / "d", size=32, months=4)
    sim = json.loads((root / "simulation.json").read_text())
    assert [split_of(a) for a in sim["aois"]] == ["train"] * 2 + ["validation"] * 2 + ["test"] * 2
    for split in ("train", "validation", "test"):
        ds = SpaceNet7S1S2(root, split, crop_size=16)
        assert len(ds.aois) == 2 and len(ds) >= 1
        x = ds[0]
        assert x["s1"].shape == (2, 16, 16) and x["s2"].shape == (4, 16, 16) and x["mask"].shape == (1, 16, 16)
        assert 0 <= x["s1"].min() and x["s1"].max() <= 1 and 0 <= x["s2"].min() and x["s2"].max() <= 1
    meta = json.loads((root / METADATA_NAMES[0]).read_text())
    assert set(meta) == set(sim["aois"])
    assert all(set(t) == {"aoi_id", "year", "month", "s1", "s2", "buildings", "masked"} for ts in meta.values()
               for t in ts)


def test_simulated_is_byte_identical_and_seeded(tree_digest, tmp_path: Path):
    kw = dict(aois=[TEST_AOIS[2]], size=32, months=5)
    a = simulate_spacenet7(tmp_path / "a", seed=4, **kw)
    b = simulate_spacenet7(tmp_path / "b", seed=4, **kw)
    c = simulate_spacenet7(tmp_path / "c", seed=5, **kw)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    with pytest.raises(DatasetError, match="not empty"):
        simulate_spacenet7(a, seed=4, **kw)


@pytest.mark.skipif(REAL is None, reason="real SpaceNet7-S1S2 metadata not available beside the checkout")
def test_simulated_follows_real_availability(tmp_path: Path):
    aoi = "L15-0506E-1204N_2027_3374_13"  # 8 of 22 selected test months lack S2
    root = simulate_spacenet7(tmp_path / "r", aois=[aoi], size=32)
    real = load_metadata(REAL)[aoi]
    written = load_metadata(root / METADATA_NAMES[0])[aoi]
    assert written == real
    for t in written:  # only the files the flags promise exist
        assert sentinel2_path(root, aoi, t.year, t.month).is_file() == t.sentinel2
        assert sentinel1_path(root, aoi, t.year, t.month).is_file() == t.sentinel1
        assert label_path(root, aoi, t.year, t.month).is_file() == t.label
    ds = SpaceNet7S1S2(root, "test", crop_size=None)
    assert len(ds) == 22 and int(ds.missing_optical.sum()) == 8
    miss = int(np.flatnonzero(ds.missing_optical)[0])
    assert (ds[miss]["s2"] == 0).all() and ds[miss]["missing_optical"]
    # the knob can only raise the share of missing optical months
    more = simulate_spacenet7(tmp_path / "m", aois=[aoi], size=32, knobs=SceneKnobs(missing_optical_rate=0.6))
    more_ds = SpaceNet7S1S2(more, "test", crop_size=None)
    assert len(more_ds) == 22 and more_ds.missing_optical.sum() > 8
    assert (more_ds.missing_optical >= ds.missing_optical).all()


def test_simulated_fallback_availability_and_growth(tmp_path: Path):
    aoi = "L15-9999E-9999N_0000_0000_13"  # not a real AOI: simulated availability
    root = simulate_spacenet7(tmp_path / "f", aois=[aoi], size=48, months=12, seed=1,
                              knobs=SceneKnobs(missing_optical_rate=0.5, urban_fraction=0.4))
    meta = load_metadata(root / METADATA_NAMES[0])[aoi]
    assert [(t.year, t.month) for t in meta] == [(2018, m) for m in range(1, 13)]
    assert all(t.label and t.sentinel1 and not t.mask for t in meta)
    ds = SpaceNet7S1S2(root, None, crop_size=None)
    assert len(ds) == 12 and 0 < ds.missing_optical.sum() < 12
    masks = torch.stack([ds[i]["mask"][0] for i in range(len(ds))])
    assert (masks[1:] >= masks[:-1]).all() and masks[0].sum() > 0  # shared buildings that only grow
    none = simulate_spacenet7(tmp_path / "n", aois=[aoi], size=32, months=6, knobs=SceneKnobs())
    assert not SpaceNet7S1S2(none, None, crop_size=None).missing_optical.any()  # knob 0 → nothing missing


def test_simulated_from_given_availability(tmp_path: Path):
    aoi = TRAIN_AOIS[3]
    avail = {aoi: [_ts(aoi, 2019, 1), _ts(aoi, 2019, 2, s2=False), _ts(aoi, 2019, 3, mask=True)]}
    (tmp_path / "avail.json").write_text(json.dumps(avail))
    root = simulate_spacenet7(tmp_path / "g", aois=[aoi], size=32, availability=tmp_path / "avail.json")
    ds = SpaceNet7S1S2(root, "train", crop_size=None)
    assert ds.missing_optical.tolist() == [False, True]
    assert not sentinel2_path(root, aoi, 2019, 2).exists()


def test_simulate_argument_errors(tmp_path: Path):
    with pytest.raises(DatasetError, match="size"):
        simulate_spacenet7(tmp_path / "x", size=4)
    with pytest.raises(DatasetError, match="months"):
        simulate_spacenet7(tmp_path / "x", months=0)
    with pytest.raises(DatasetError, match="does not match"):
        simulate_spacenet7(tmp_path / "x", n=2, aois=[TRAIN_AOIS[0]])
    with pytest.raises(ValueError, match="valid knobs"):
        simulate_spacenet7(tmp_path / "x", knobs={"cloudiness": 1})


def test_modality_files(minimal: Path):
    ds = SpaceNet7S1S2(minimal, "train", crop_size=None)
    f0, f1 = ds.modality_files(0), ds.modality_files(1)
    assert f0 == {"s1": [sentinel1_path(minimal, AOI, 2018, 1)], "s2": [sentinel2_path(minimal, AOI, 2018, 1)],
                  "mask": [label_path(minimal, AOI, 2018, 1)]}
    assert f1["s2"] == [] and f1["s1"] == [sentinel1_path(minimal, AOI, 2018, 2)]  # no optical image that month
