"""Paper 5 experiments: training and read-back on tiny simulated data, the planted sweep, the paper dry run."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fusionbook.data.simulate import simulate
from fusionbook.data.spacenet7 import label_path, load_metadata, sentinel1_path
from fusionbook.experiments import paper5 as p5
from fusionbook.experiments.recipe import Run
from fusionbook.results import read_results


def _tiny_run(tmp_path):
    root = simulate("spacenet7", tmp_path / "sn7", n=3, seed=0, size=32, months=6)
    return Run.start("paper5", p5.PROFILES, profile="smoke", data_root=root, device="cpu", out_dir=tmp_path / "out",
                     overrides=dict(max_steps=2, seeds=(0,)), dataset="spacenet7")


def test_train_every_method_and_read_back(tmp_path):
    run = _tiny_run(tmp_path)
    run.cfg = run.cfg.replace(topology=(4, 8), crop_size=16)
    keys = {f"{s}_{k}" for s in p5.SUBSETS for k in p5.METRICS}
    for method in p5.METHODS:
        tr = p5.train_variant(run, method, 0)
        assert not tr.skipped and keys <= set(tr.metrics)
        assert np.isfinite(tr.metrics["all_f1"]) and tr.summary["epochs_run"] == 1
        run.writer.add_rows(p5.table1_rows(tr, run.digest))
        again = p5.train_variant(run, method, 0)
        assert again.skipped and pd.Series(again.metrics).sort_index().equals(pd.Series(tr.metrics).sort_index())
    rows = read_results(run.out / "results.json")
    t1 = rows[rows["table"] == "Table 1"]
    assert len(t1) == 3 * 3 * 2 and set(t1["method"]) == set(p5.METHODS)
    assert t1["published"].notna().all() and t1["published_sd"].notna().all()


def test_sweep_plants_only_the_missing_rate(tmp_path):
    "Rates 0 / 0.25 / 0.5: nested missing months, identical S1 images and labels (nuisance equal)."
    cfg = p5.PROFILES["smoke"].replace(sweep_aois=3, sweep_months=12, sweep_size=32, crop_size=32)
    roots, missing = {}, {}
    for r in (0.0, 0.25, 0.5):
        kw = p5.sweep_simulation(cfg, r)
        roots[r] = simulate("spacenet7", tmp_path / f"r{r}", **kw)
        meta = load_metadata(roots[r] / "metadata_spacenet7_s1s2.json")
        missing[r] = {(t.aoi_id, t.year, t.month) for ts in meta.values() for t in ts if t.sentinel2 is False}
        n = sum(len(ts) for ts in meta.values())
    assert not missing[0.0] and missing[0.25] <= missing[0.5] and len(missing[0.5]) > len(missing[0.25])
    assert 0.25 < len(missing[0.5]) / n < 0.75
    for aoi, ts in load_metadata(roots[0.0] / "metadata_spacenet7_s1s2.json").items():
        for t in ts:
            for path in (sentinel1_path, label_path):
                a = path(roots[0.0], aoi, t.year, t.month).read_bytes()
                b = path(roots[0.5], aoi, t.year, t.month).read_bytes()
                assert a == b, (aoi, t.year, t.month, path.__name__)


@pytest.mark.slow
def test_paper_profile_dry_run(tmp_path):
    "The paper's models (44 M parameters for the proposed one), batch and crop for two steps on simulated data."
    root = simulate("spacenet7", tmp_path / "sn7", n=3, seed=0, size=64, months=4)
    nb = os.path.join(os.path.dirname(p5.__file__), "..", "chapters", "paper5.ipynb")
    params = ["-p", "profile", "paper", "-p", "data_root", str(root), "-p", "max_steps", "2", "-p", "device", "cpu",
              "-p", "sweep", "False", "-y", "seeds: [1]", "-p", "out_dir", str(tmp_path / "out")]
    res = subprocess.run([sys.executable, "-m", "papermill", nb, str(tmp_path / "out.ipynb"), *params,
                          "--cwd", str(tmp_path)], capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    df = read_results(tmp_path / "out" / "results.json")
    t1 = df[df["table"] == "Table 1"]
    assert set(t1["method"]) == set(p5.METHODS) and len(t1) == 18
    assert pd.notna(df.attrs["provenance"]["wall_time_s"])
