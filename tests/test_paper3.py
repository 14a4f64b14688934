"""Paper 3 experiment pipeline end to end on a tiny simulated BigEarthNet (fusionbook.experiments.paper3)."""

import dataclasses
import math

import pandas as pd
import pytest

from fusionbook.experiments import paper3 as p3
from fusionbook.experiments.recipe import Run, simulated_data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper3")
    tiny = p3.PROFILES["smoke"].replace(sim_n=90, sim_scenario_n=20, epochs=1, batch_size=8, ood_epochs=1,
                                        threads=None)
    profiles = {"smoke": tiny, "paper": p3.PROFILES["paper"]}
    r = Run.start("paper3", profiles, profile="smoke", out_dir=tmp / "out", dataset="bigearthnet",
                  simulate=p3.simulation, cache=tmp / "cache", device="cpu")
    r.extra = {k: simulated_data("bigearthnet", cache=tmp / "cache", **v)
               for k, v in p3.scenario_simulations(tiny).items()}
    return r


def test_class_sets_and_splits(run):
    cfg = run.cfg
    clear = p3.load_split(cfg, run.data, "test", "id", "clear")
    assert len(clear) > 0
    s = clear[0]
    assert s["image"].shape == (14, 15, 15) and s["label"].shape == (12,)  # 120×120 average-pooled by 8
    ood = p3.load_split(cfg, run.data, "train", "ood_train", "any")
    assert len(ood) > 0 and ood[0]["label"].shape == (2,)
    cloudy = p3.load_split(cfg, run.extra["cloudy"], "test", "id", "any")
    assert all(r.cloud for r in cloudy.records)  # the dedicated cloud simulation flags every patch
    with pytest.raises(ValueError, match="valid class sets"):
        p3.load_split(cfg, run.data, "test", "water")


def test_train_variant_refuses_bad_modalities(run):
    for mods in ((), ("s1", "s1"), ("s3",)):
        with pytest.raises(ValueError, match="modalities"):
            p3.train_variant(run, "multishot", 0, modalities=mods)
    with pytest.raises(ValueError, match="modalities"):  # the baseline has no branch to leave out
        p3.train_variant(run, "baseline", 0, modalities=("s1",))


def test_pipeline_trains_and_fills_table1(run):
    seed = run.cfg.seeds[0]
    ms = p3.train_variant(run, "multishot", seed)
    base = p3.train_variant(run, "baseline", seed)
    model = p3.train_detectors(run, ms, seed)
    assert (ms.checkpoint.parent / "detectors.pt").is_file()
    sets = p3.scenario_sets(run.cfg, run.data, run.extra)
    assert set(sets) == set(p3.SCENARIOS)
    rows = p3.evaluate_scenarios(base.model, model, sets, batch_size=16)
    clear = rows[(rows.scenario == "clear") & (rows.method == "adaptive")].set_index("metric")["value"]
    for k in ("f1_micro", "f1_macro", "f1_samples", "f2_micro", "map_micro", "entropy", "confidence"):
        assert math.isfinite(clear[k])
    assert 0 <= clear["entropy"] <= 1 and 0.5 <= clear["confidence"] <= 1
    assert not ((rows.scenario == "ood_classes") & rows.metric.str.startswith("f")).any()
    t = p3.table1(rows)
    assert len(t) == len(p3.PUBLISHED_TABLE1)
    assert t["reproduced"].notna().sum() > 0
    # read back on a rerun: same detectors, same numbers
    again = p3.train_detectors(run, p3.train_variant(run, "multishot", seed), seed)
    rows2 = p3.evaluate_scenarios(base.model, again, {"clear": sets["clear"]}, batch_size=16)
    pd.testing.assert_frame_equal(rows[rows.scenario == "clear"].reset_index(drop=True), rows2)


def test_null_model_and_scenario_checks(run):
    """The null model is the untrained network of the seed (batch-norm statistics from the training patches): it
    is deterministic, gets its own detectors, and the scenario checks score it beside the trained model."""
    seed = run.cfg.seeds[0]
    null = p3.train_variant(run, "multishot", seed, null=True)
    again = p3.train_variant(run, "multishot", seed, null=True)
    assert null.metrics == again.metrics and 0 <= null.metrics["map_micro"] <= 1
    assert set(null.metrics) >= {"map_micro", "f1_micro", "map_micro_fuse", "map_micro_sar", "map_micro_opt"}
    sets = p3.scenario_sets(run.cfg, run.data, run.extra)
    base = p3.train_variant(run, "baseline", seed)
    trained = p3.train_detectors(run, p3.train_variant(run, "multishot", seed), seed)
    null_model = p3.train_detectors(run, null, seed)
    assert (null.checkpoint.parent / "detectors.pt").is_file()
    prior = p3.prior_map(run.cfg, run.data)
    assert 0 < prior < 1
    rows = p3.evaluate_scenarios(base.model, trained, sets, batch_size=16)
    null_rows = p3.evaluate_scenarios(base.model, null_model, sets, batch_size=16)
    checks = p3.planted_checks(rows, null_rows, prior)
    assert set(checks.model) == {"trained", "null"} and len(checks) == 10
    gate = checks[checks.check.str.startswith("learned")].set_index("model")["value"]
    assert all(math.isfinite(v) for v in gate)


def test_planted_task_runs_through_the_harness(run, tmp_path):
    """`planted_task` plugs into `run_planted`: one tiny setting, two seeds; verdicts for the trained and the null
    model, branch switch-off and occlusion importances for both modalities."""
    from fusionbook.experiments.planted import planted_verdicts, run_planted

    cfg = run.cfg.replace(planted_n=60, planted_epochs=1, planted_seeds=(0, 1))
    prun = dataclasses.replace(run, cfg=cfg)
    task = p3.planted_task(prun)
    assert task.metric == "map_micro" and not task.lower_is_better and task.retrain_oracle
    settings = p3.planted_setting_list(cfg)[:1]
    verdicts, scores = run_planted(task, settings, cfg.planted_seeds, progress=False)
    assert len(verdicts) == 2 * 2  # seeds × {trained, null}
    assert set(verdicts["oracle"]) == {"retrain"}
    assert set(scores.method) == {"branch switch-off (λ = 0)", "output occlusion", "retrain oracle"}
    # the retrained models sit beside the full one, one per left-out modality
    names = {p.parent.name for p in (prun.out / "checkpoints").rglob("seed0")}
    assert {"multishot", "multishot~only-s1", "multishot~only-s2"} <= names
    assert set(scores.modality) == {"s1", "s2"}
    assert verdicts["baseline"].between(0, 1).all() and verdicts["score"].between(0, 1).all()
    assert set(planted_verdicts(verdicts)["verdict"]) <= {"recovered", "not recovered", "not learned"}


@pytest.mark.slow
def test_paper_profile_dry_run(tmp_path):
    """The paper's model sizes (ResNet-50 branches, 1000-unit head, 120×120 patches, paper detectors) for two
    optimiser steps through the whole chapter, on full-size simulated patches given as data_root."""
    import json
    import os
    import subprocess
    import sys

    from fusionbook.data import simulate
    from fusionbook.results import read_results

    root = simulate("bigearthnet", tmp_path / "ben", n=60, seed=0, composition_concentration=0.3)
    nb = os.path.join(os.path.dirname(p3.__file__), "..", "chapters", "paper3.ipynb")
    params = ["-p", "profile", "paper", "-p", "data_root", str(root), "-p", "max_steps", "2", "-p", "device", "cpu",
              "-p", "num_workers", "0", "-p", "planted", "False", "-p", "out_dir", str(tmp_path / "out")]
    res = subprocess.run([sys.executable, "-m", "papermill", nb, str(tmp_path / "out.ipynb"), *params,
                          "--cwd", str(tmp_path)], capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    df = read_results(tmp_path / "out" / "results.json")
    t1 = df[df["table"] == "Table 1"]
    assert len(t1) > 0 and t1["reproduced"].notna().all()
    assert df.attrs["provenance"]["profile"] == "paper"
    done = [json.loads(p.read_text()) for p in (tmp_path / "out" / "checkpoints").rglob("done.json")]
    assert {d["variant"] for d in done} == {"multishot", "baseline"}
    assert all(d["summary"]["epochs_run"] == 1 for d in done)
