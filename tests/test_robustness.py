"""The robustness benchmark: corrupted test sets change only the optical images, every strategy trains and is
evaluated under every sweep, rows reach the results file, and the paper profile runs as a dry run."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from fusionbook.experiments import paper5 as p5
from fusionbook.experiments import robustness as rb
from fusionbook.experiments.recipe import Run, simulated_data
from fusionbook.results import read_results

TINY = rb.PROFILES["smoke"].replace(seeds=(0,), sim_aois=3, sim_size=32, sim_months=3, max_steps=1,
                                    cloud_levels=(0.0, 1.0), snow_levels=(0.0, 1.0), missing_levels=(0.0, 0.5),
                                    ml_sim_n=40, ml_test_n=8, ml_crop_size=32)


def test_corrupted_test_sets_change_only_the_optical_images(tmp_path):
    clean = simulated_data("spacenet7", cache=tmp_path, **rb.simulation(TINY))
    base = p5.load_split(TINY, clean, "test")
    for sweep in rb.SWEEPS:
        ds = p5.load_split(TINY, rb.corrupted_test(TINY, clean, sweep, 1.0 if sweep != "missing" else 0.5,
                                                   cache=tmp_path), "test")
        assert [s.aoi_id for s in ds.samples] == [s.aoi_id for s in base.samples]
        diff = 0.0
        for i in range(len(base)):
            a, b = base[i], ds[i]
            assert torch.equal(a["s1"], b["s1"]) and torch.equal(a["mask"], b["mask"])
            diff += float((a["s2"] - b["s2"]).abs().mean())
        assert diff > 0, sweep
    # level 0 of a sweep is the clean test split itself
    same = p5.load_split(TINY, rb.corrupted_test(TINY, clean, "cloud", 0.0, cache=tmp_path), "test")
    assert all(torch.equal(base[i]["s2"], same[i]["s2"]) for i in range(len(base)))


def test_missing_months_are_nested(tmp_path):
    clean = simulated_data("spacenet7", cache=tmp_path, **rb.simulation(TINY.replace(sim_months=8)))
    cfg = TINY.replace(sim_months=8)
    miss = {r: p5.load_split(cfg, rb.corrupted_test(cfg, clean, "missing", r, cache=tmp_path), "test").missing_optical
            for r in (0.0, 0.3, 0.6)}
    assert not miss[0.0].any()
    assert (miss[0.3] <= miss[0.6]).all() and miss[0.6].sum() > miss[0.3].sum()


def test_every_strategy_trains_and_is_evaluated_under_every_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONBOOK_CACHE", str(tmp_path / "cache"))
    run = Run.start("robustness", {"smoke": TINY}, profile="smoke", device="cpu", out_dir=tmp_path / "out",
                    dataset="spacenet7", simulate=rb.simulation, simulated_only=True)
    trained = [rb.train_strategy(run, s, 0) for s in TINY.strategies]
    assert {t.variant for t in trained} == set(rb.STRATEGIES)
    sets = rb.segmentation_sets(TINY, run.data)
    assert set(sets) == {(s, v) for s in rb.SWEEPS for v in TINY.levels(s)}
    prior = rb.prior_f1(sets[("cloud", 0.0)])
    curves = rb.evaluate_segmentation(run, trained, sets, prior)
    assert len(curves) == len(trained) * len(sets)
    assert curves["f1"].between(0, 1).all() and curves["learned"].dtype == bool
    # the clean level of every sweep scores every model identically (same test images)
    clean = curves[curves["level"] == 0].groupby(["strategy", "seed"])["f1"].nunique()
    assert (clean == 1).all()
    summary = rb.degradation(curves)
    assert len(summary) == len(rb.STRATEGIES) * len(rb.SWEEPS)
    v = rb.verdicts(summary)
    assert set(v["sweep"]) == set(rb.SWEEPS)
    run.finish()
    rows = read_results(tmp_path / "out" / "results.json")
    r = rows[rows["table"] == "robustness"]
    assert set(r["strategy"]) == set(rb.STRATEGIES) and set(r["sweep"]) == set(rb.SWEEPS)
    assert len(r) == len(curves) * 4  # f1, iou, f1_complete, f1_missing
    # a rerun reads every model back
    run2 = Run.start("robustness", {"smoke": TINY}, profile="smoke", device="cpu", out_dir=tmp_path / "out",
                     dataset="spacenet7", simulate=rb.simulation, simulated_only=True)
    assert all(rb.train_strategy(run2, s, 0).skipped for s in TINY.strategies)
    run2.close()


def test_real_segmentation_probe_on_the_vendored_pair():
    loc = os.path.join(os.path.dirname(rb.__file__), "..", "..", "data", rb.SSL4EO_FOLDER)
    if not os.path.isdir(loc):
        pytest.skip("no checkout data/ folder")
    dates = rb.read_ssl4eo(loc)
    assert dates[0]["cloud"] < dates[-1]["cloud"] and len(dates) == 2
    tr = [rb.Trained(s, 0, rb.build_model(TINY, s).eval(), {}, None, True) for s in rb.STRATEGIES]
    df = rb.real_segmentation_probe(TINY, tr, dates, 64)
    assert list(df["strategy"]) == list(rb.STRATEGIES)
    assert df[["built_clear", "built_cloudy", "change"]].apply(lambda c: c.between(0, 1)).all().all()


def test_gate_and_prior_predictors():
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1]])
    f, pick = rb.constant_f1(y, y)
    assert pick == [0] and np.isclose(f, 2 * 3 / (2 * 3 + 1 + 2))
    g = rb.gate(0.5, 0.2, 0.1)
    assert g["learned"] and np.isclose(g["gain"], 0.375)
    assert not rb.gate(0.1, 0.2, 0.1)["learned"]
    with pytest.raises(ValueError, match="cloud_levels"):
        rb.PROFILES["smoke"].replace(cloud_levels=(0.2, 0.1))
    with pytest.raises(ValueError, match="crop_size"):
        rb.PROFILES["smoke"].replace(crop_size=30)


def test_profiles_follow_the_papers():
    paper = rb.PROFILES["paper"]
    p5p = p5.PROFILES["paper"]
    for k in ("topology", "lr", "weight_decay", "batch_size", "epochs", "patience", "crop_size", "phi"):
        assert getattr(paper, k) == getattr(p5p, k), k
    m = rb.ml_config(paper)
    p3p = rb.p3.PROFILES["paper"]
    for k in ("depth", "hidden", "epochs", "batch_size", "lr", "crop_size", "ood_epochs", "ood_hidden"):
        assert getattr(m, k) == getattr(p3p, k), k
    assert len(rb.PROFILES["smoke"].seeds) >= 2


def test_multilabel_strategies_under_every_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONBOOK_CACHE", str(tmp_path / "cache"))
    run = Run.start("robustness", {"smoke": TINY}, profile="smoke", device="cpu", out_dir=tmp_path / "out",
                    dataset="spacenet7", simulate=rb.simulation, simulated_only=True)
    mrun = rb.ml_run(run)
    assert mrun.cfg.crop_size == TINY.ml_crop_size and mrun.out == run.out and mrun.writer is run.writer
    models = [rb.train_multilabel(mrun, 0)]
    sets = rb.ml_sets(run, mrun)
    assert set(sets) == {(s, v) for s in rb.SWEEPS for v in TINY.levels(s)}
    a, b = sets[("cloud", 0.0)], sets[("cloud", 1.0)]
    assert len(a) == len(b) > 0
    assert torch.equal(a[0]["image"][:2], b[0]["image"][:2]) and torch.equal(a[0]["label"], b[0]["label"])
    assert not torch.equal(a[0]["image"][2:], b[0]["image"][2:])
    prior = rb.multilabel_prior(mrun, a)
    curves = rb.evaluate_multilabel(run, models, sets, prior)
    assert len(curves) == len(sets) * len(rb.ML_STRATEGIES)
    assert set(curves["strategy"]) == set(rb.ML_STRATEGIES) and curves["entropy"].between(0, 1).all()
    assert curves.groupby("strategy")["learned"].nunique().eq(1).all()  # one gate per model and strategy
    loc = os.path.join(os.path.dirname(rb.__file__), "..", "..", "data", rb.SSL4EO_FOLDER)
    dates = rb.read_ssl4eo(loc) if os.path.isdir(loc) else None
    reben = rb.p3.real_probe_sets(tmp_path / "real").get("reBEN (configilm)")
    real = rb.real_multilabel_probe(models, reben, dates, TINY.ml_crop_size)
    if reben is not None:
        r = real[real["source"] == "reBEN (configilm)"]
        assert set(r["group"]) <= {"clear", "cloudy", "snowy"}
        assert r["n"].groupby(r["strategy"]).sum().eq(len(reben)).all()
    run.close()


@pytest.mark.slow
def test_paper_profile_dry_run(tmp_path):
    "The paper-size networks for two steps each, on small simulated data, through the whole chapter."
    nb = os.path.join(os.path.dirname(rb.__file__), "..", "chapters", "robustness.ipynb")
    params = ["-p", "profile", "paper", "-p", "max_steps", "2", "-p", "device", "cpu", "-y", "seeds: [1]",
              "-p", "sim_aois", "3", "-p", "sim_size", "64", "-p", "sim_months", "2", "-p", "ml_sim_n", "40",
              "-p", "ml_test_n", "8", "-p", "out_dir", str(tmp_path / "out")]
    res = subprocess.run([sys.executable, "-m", "papermill", nb, str(tmp_path / "out.ipynb"), *params,
                          "--cwd", str(tmp_path)], capture_output=True, text=True, timeout=3000)
    assert res.returncode == 0, res.stderr[-3000:]
    df = read_results(tmp_path / "out" / "results.json")
    r = df[df["table"] == "robustness"]
    assert set(r["task"]) == {"segmentation", "multilabel"}
    assert pd.notna(df.attrs["provenance"]["wall_time_s"])
