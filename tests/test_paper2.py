"""Paper 2 on the recipe: configuration, a micro end-to-end run on a tiny simulated MapInWild, resume and
read-back, the planted-truth task end to end, and the paper-profile dry run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from fusionbook.data import simulate
from fusionbook.experiments import paper2 as p2
from fusionbook.experiments import planted as pt
from fusionbook.experiments.recipe import Run, resolve
from fusionbook.results import check_profile, read_results

TINY = dict(base_channels=4, crop_size=16, sim_tiles=10, sim_tile_size=32, batch_size=2, epochs=1,
            eval_batch_size=4, planted_tiles=10, seeds=(0,), planted_seeds=(0,), planted_epochs=1,
            planted_crop_size=16)


def test_unknown_profile_and_key_list_valid_ones():
    with pytest.raises(ValueError, match="valid choices: paper, smoke"):
        resolve(p2.PROFILES, "full")
    with pytest.raises(ValueError, match="epochs"):
        resolve(p2.PROFILES, "smoke", {"epoch": 2})
    with pytest.raises(ValueError, match="crop_size"):
        resolve(p2.PROFILES, "smoke", {"crop_size": 40})
    with pytest.raises(ValueError, match="split"):
        resolve(p2.PROFILES, "smoke", {"split": [0.8, 0.1, 0.2]})
    with pytest.raises(ValueError, match="optimizer"):
        resolve(p2.PROFILES, "paper", {"optimizer": "sgd"})
    cfg = resolve(p2.PROFILES, "smoke", {"epochs": "2", "seeds": "[3, 4]", "lr": "1e-4", "batch_size": None})
    assert (cfg.epochs, cfg.seeds, cfg.lr, cfg.batch_size) == (2, (3, 4), 1e-4, 4)


def test_paper_profile_matches_the_paper():
    cfg = p2.PROFILES["paper"]
    check_profile(cfg, p2.PAPER_SPEC)
    assert cfg.epochs == 150 and cfg.seeds == (31, 32, 33)
    assert sum(p.numel() for p in p2.build_model(cfg, 14).parameters()) == 17_273_729


def test_digest_ignores_operational_fields_and_paths(tmp_path):
    cfg = p2.PROFILES["smoke"]
    assert cfg.digest() == cfg.replace(num_workers=7, threads=3, seeds=(5,), eval_batch_size=2).digest()
    assert cfg.digest() != cfg.replace(lr=2e-3).digest() and cfg.digest() != cfg.replace(max_steps=2).digest()
    a = Run.start("paper2", p2.PROFILES, out_dir=tmp_path / "a", dataset="mapinwild", simulate=p2.simulation,
                  overrides=dict(TINY))
    b = Run.start("paper2", p2.PROFILES, out_dir=tmp_path / "b", dataset="mapinwild", simulate=p2.simulation,
                  overrides=dict(TINY, num_workers=1))
    assert a.digest == b.digest  # another output folder and worker count: the same experiment


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("paper2")
    return Run.start("paper2", p2.PROFILES, profile="smoke", out_dir=base / "out", dataset="mapinwild",
                     simulate=p2.simulation, overrides=TINY, device="cpu")


def test_micro_end_to_end_writes_results(run, tmp_path):
    t = p2.train_variant(run, "all", 0)
    p2.record_table1(run, t, "all")
    assert not t.skipped and t.fit.best_epoch == 1 and t.checkpoint.is_file()
    df = read_results(run.writer.path)
    rows = df[(df["setting"] == "all") & (df["table"] == "Table I")]
    assert set(rows["metric"]) == {"MAE", "RMSE"} and set(rows["config"]) == {run.digest}
    mae = float(rows.loc[rows["metric"] == "MAE", "reproduced"].iloc[0])
    assert mae == pytest.approx(t.metrics["mae"]) and 0 < mae < 1
    assert float(rows.loc[rows["metric"] == "MAE", "published"].iloc[0]) == 0.109
    # the same experiment in a fresh output folder reproduces the run exactly (seeded weights, crops, sampling)
    twin = Run.start("paper2", p2.PROFILES, out_dir=tmp_path / "twin", dataset="mapinwild", simulate=p2.simulation,
                     overrides=TINY, device="cpu")
    assert p2.train_variant(twin, "all", 0).metrics == t.metrics
    prov = df.attrs["provenance"]
    assert prov["profile"] == "smoke" and prov["data_source"].startswith("simulated MapInWild")
    assert prov["config"]["crop_size"] == 16
    test = p2.load_split(run.cfg, run.data, "test")
    inf = p2.influence_table(t.model, run.cfg, test, fill="gaussian")
    assert list(inf.columns) == ["id", *p2.PAPER2_GROUPS] and len(inf) == len(test)
    assert (inf[list(p2.PAPER2_GROUPS)] >= 0).all().all()
    assert inf.equals(p2.influence_table(t.model, run.cfg, test, fill="gaussian"))  # seeded noise
    with pytest.raises(ValueError, match="training-set channel means"):
        p2.influence_table(t.model, run.cfg, test, fill="mean")


def test_resume_and_read_back(run):
    table, models = p2.run_table1(run, variants=["all", "s1"])
    table2, models2 = p2.run_table1(run, variants=["all", "s1"])
    assert table2["skipped"].all()
    assert table2["MAE"].tolist() == pytest.approx(table["MAE"].tolist())
    for a, b in zip(models[0].state_dict().values(), models2[0].state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    # an interrupted run (checkpoints written, no done record) resumes from last.pt instead of training again
    ckpt = run.checkpoint_dir("s1", 0)
    (ckpt / "done.json").unlink()
    again = p2.train_variant(run, "s1", 0)
    assert not again.skipped and again.fit.resumed_from_epoch == 1 and len(again.fit.history) == 1
    assert again.metrics["mae"] == pytest.approx(float(table.loc[table["variant"] == "s1", "MAE"].iloc[0]))
    # another configuration is trained afresh, in its own folder
    other = dataclasses.replace(run, cfg=run.cfg.replace(lr=5e-4))
    assert other.checkpoint_dir("s1", 0) != ckpt and not p2.train_variant(other, "s1", 0).skipped


def test_sample_weights_cache_is_keyed(run, tmp_path):
    ds = p2.load_split(run.cfg, run.data, "train")
    w = p2.sample_weights(ds, 1e-3, cache_dir=tmp_path)
    w2 = p2.sample_weights(ds, 0.5, cache_dir=tmp_path)  # another floor: another cache entry
    assert len(list(tmp_path.glob("*.csv"))) == 2 and not (w == w2).all()


def test_planted_truth_end_to_end(run):
    task = p2.planted_task(run)
    settings = p2.planted_settings(run.cfg)
    assert [s.knobs["informative"] for s in settings] == ["s2", "s1"]
    verdicts, scores = pt.run_planted(task, settings[:1], seeds=[0], progress=False)
    assert set(verdicts["model"]) == {"trained", "null"}
    assert set(verdicts["method"]) == {"embedding distance (zeros)", "embedding distance (mean)"}
    assert set(verdicts["oracle_top"]) <= set(p2.MODALITIES) and verdicts["baseline"].gt(0).all()
    assert set(scores["method"]) >= {"retrain oracle", "output occlusion"}
    rows = pt.planted_rows(verdicts, config=run.digest)
    run.writer.add_rows(rows)
    df = read_results(run.writer.path)
    planted = df[df["table"] == "Planted truth"]
    assert len(planted) == len(verdicts)
    assert {"setting", "planted", "method", "model", "learned", "top", "recovered", "oracle_top"} <= set(df.columns)


def test_published_fig6_is_not_consistent_and_fig5_agreement():
    from fusionbook.attribution.compare import method_ranks, rank_consistency

    cons = rank_consistency(method_ranks(p2.PUBLISHED_FIG6, p2.MODALITIES))
    assert not cons["consistent"] and set(cons["top"].values()) == {"s2"}
    agree = p2.published_agreement()
    assert agree["spearman"] == pytest.approx(-0.6)


@pytest.mark.slow
def test_paper_profile_dry_run(tmp_path):
    """`fusionbook run paper2 --profile paper -p max_steps 2`: the paper's exact model, batch (16) and crop (256 px)
    for two optimiser steps on simulated tiles in the authors' layout (512 px, so that crops are random; the real
    tiles are 1920 px, which changes only the reading) — the all-modality variant only, to stay short."""
    root = simulate("mapinwild", tmp_path / "mapinwild", n=20, seed=0, tile_size=512, seasons=("temporal_subset",),
                    splits=(0.8, 0.1, 0.1))
    res = subprocess.run([sys.executable, "-m", "fusionbook", "run", "paper2", "--profile", "paper", "--data-root",
                          str(root), "--out", str(tmp_path / "out"), "-p", "max_steps", "2", "-p", "device", "cpu",
                          "-p", "num_workers", "0", "-p", "planted", "False", "-p", "seeds", "[31]",
                          "-p", "variants", '["all"]', "--quiet"],
                         capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    out = tmp_path / "out" / "paper2"
    df = read_results(out / "results.json")
    t1 = df[df["table"] == "Table I"]
    assert set(t1["setting"]) == {"all"} and t1["reproduced"].notna().all()
    done = json.loads(next((out / "checkpoints").rglob("done.json")).read_text())
    assert done["summary"]["epochs_run"] == 1
    assert df.attrs["provenance"]["config"]["crop_size"] == 256 and df.attrs["provenance"]["config"]["batch_size"] == 16
    assert pd.notna(df.attrs["provenance"]["wall_time_s"])
