"""Paper 2 recipe: configuration, a micro end-to-end run on a tiny simulated MapInWild, resume and skipping."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

from fusionbook.experiments import paper2 as p2
from fusionbook.results import check_profile, read_results


def test_unknown_profile_and_key_list_valid_ones():
    with pytest.raises(ValueError, match="valid profiles: paper, smoke"):
        p2.get_config("full")
    with pytest.raises(ValueError, match="valid keys: .*epochs"):
        p2.get_config("smoke", {"epoch": 2})
    with pytest.raises(ValueError, match="crop_size"):
        p2.get_config("smoke", {"crop_size": 40})
    with pytest.raises(ValueError, match="split"):
        p2.get_config("smoke", {"split": [0.8, 0.1, 0.2]})
    with pytest.raises(ValueError, match="valid choices"):
        p2.get_config("paper", {"optimizer": "sgd"})
    cfg = p2.get_config("smoke", {"epochs": "2", "seeds": "[3, 4]", "lr": "1e-4"})
    assert (cfg.epochs, cfg.seeds, cfg.lr, cfg.profile) == (2, (3, 4), 1e-4, "smoke")


def test_paper_profile_matches_spec():
    cfg = p2.PROFILES["paper"]
    check_profile(cfg, p2.PAPER_SPEC)
    # spec §2.1–2.4 written out once more, independently of PAPER_SPEC
    check_profile(cfg, {"lr": 1e-4, "batch_size": 16, "patience": 40, "t0_epochs": 3, "t_mult": 1, "crop_size": 256,
                        "loss": "mse", "optimizer": "adam", "epochs": 150, "base_channels": 64})
    assert cfg.split == (0.8, 0.1, 0.1) and cfg.augment and cfg.sample_weighting == "inverse_mean_ni"
    assert sum(p.numel() for p in p2.build_model(cfg, 14).parameters()) == 17_273_729
    smoke = p2.PROFILES["smoke"]
    assert smoke.base_channels < 64 and smoke.crop_size == 64 and smoke.epochs <= 3
    assert len(smoke.seeds) == 2  # the fewest seeds that give a standard deviation in Table I


def test_published_constants():
    assert list(p2.PUBLISHED_TABLE1) == list(p2.VARIANTS)
    assert p2.PUBLISHED_TABLE1["all"] == (0.109, 0.136) and p2.PUBLISHED_TABLE1["no_s2"] == (0.17, 0.194)
    assert set(p2.PUBLISHED_FIG6) == set(p2.FILLS)
    assert p2.PUBLISHED_FIG5["s2"] == 194.468
    assert [v.in_channels for v in p2.VARIANTS.values()] == [14, 10, 2, 1, 1, 4, 12, 13, 13]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("paper2")
    cfg = dataclasses.replace(p2.PROFILES["smoke"], base_channels=4, crop_size=16, sim_tiles=10, sim_tile_size=32,
                              batch_size=2, epochs=1, eval_batch_size=4, planted_tiles=10, seeds=(0,))
    root = p2.simulated_root(cfg, cache=base / "cache")
    return cfg, root, base


def test_micro_end_to_end_writes_results(tiny):
    cfg, root, base = tiny
    out = base / "out"
    run = p2.train_variant(cfg, "all", 0, root, out, "cpu", progress=False)
    assert not run.skipped and run.fit.best_epoch == 1 and (run.checkpoint).is_file()
    df = read_results(out / "results.json")
    rows = df[df["setting"] == "all"]
    assert set(rows["metric"]) == {"MAE", "RMSE"}
    mae = float(rows.loc[rows["metric"] == "MAE", "reproduced"].iloc[0])
    assert mae == pytest.approx(run.metrics["mae"]) and 0 < mae < 1
    assert float(rows.loc[rows["metric"] == "MAE", "published"].iloc[0]) == 0.109
    # the same call in a fresh folder reproduces the run exactly (seeded initial weights, crops and sampling)
    twin = p2.train_variant(cfg, "all", 0, root, base / "twin", "cpu", progress=False)
    assert twin.metrics == run.metrics
    prov = df.attrs["provenance"]
    assert prov["profile"] == "smoke" and prov["data_source"].startswith("simulated MapInWild")
    assert prov["config"]["crop_size"] == 16
    test = p2.load_split(cfg, root, "test")
    inf = p2.influence_table(run.model, cfg, test, fill="gaussian")
    assert list(inf.columns) == ["id", *p2.PAPER2_GROUPS] and len(inf) == len(test)
    assert (inf[list(p2.PAPER2_GROUPS)] >= 0).all().all()
    again = p2.influence_table(run.model, cfg, test, fill="gaussian")  # seeded noise: reproducible
    assert inf.equals(again)


def test_resume_and_skip(tiny):
    cfg, root, base = tiny
    out = base / "resume"
    table, models = p2.run_table1(cfg, root, out, "cpu", variants=["all", "s1"], progress=False)
    assert not table["skipped"].any() and set(models) == {0}
    # a rerun skips both finished variants and returns the same numbers and weights
    table2, models2 = p2.run_table1(cfg, root, out, "cpu", variants=["all", "s1"], progress=False)
    assert table2["skipped"].all()
    assert table2["MAE"].tolist() == pytest.approx(table["MAE"].tolist())
    for a, b in zip(models[0].state_dict().values(), models2[0].state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    # an interrupted run (checkpoints written, results not) resumes from last.pt instead of training again
    doc = json.loads((out / "results.json").read_text())
    doc["rows"] = [r for r in doc["rows"] if r["setting"] != "s1"]
    (out / "results.json").write_text(json.dumps(doc))
    run = p2.train_variant(cfg, "s1", 0, root, out, "cpu", progress=False)
    assert not run.skipped and run.fit.resumed_from_epoch == 1 and len(run.fit.history) == 1
    assert run.metrics["mae"] == pytest.approx(float(table.loc[table["variant"] == "s1", "MAE"].iloc[0]))
    # another configuration is trained afresh, not skipped
    other = p2.train_variant(dataclasses.replace(cfg, lr=5e-4), "s1", 0, root, out, "cpu", progress=False)
    assert not other.skipped and other.fit.resumed_from_epoch == 0


# --- analysis helpers of the chapter --------------------------------------------------------------


def test_strategy_ranks_from_long_table_average_seeds_and_samples():
    rows = [{"seed": seed, "fill": f, "id": i, "group": g, "distance": d + seed + i}
            for seed in (0, 1) for f in ("zeros", "ones") for i in (0, 1)
            for g, d in zip(("s2", "s1", "worldcover", "viirs", "all"),
                            (4, 3, 2, 1, 9) if f == "zeros" else (1, 3, 2, 4, 9))]
    ranks = p2.strategy_ranks(pd.DataFrame(rows))
    assert list(ranks.index) == ["zeros", "ones"] and list(ranks.columns) == list(p2.MODALITIES)
    assert ranks.loc["zeros"].tolist() == [1, 2, 3, 4] and ranks.loc["ones"].tolist() == [4, 2, 3, 1]
    cons = p2.rank_consistency(ranks)
    assert not cons["consistent"] and cons["top"] == {"zeros": "s2", "ones": "viirs"}
    # viirs passes all three, and s1 and worldcover both pass s2
    assert set(cons["changes"]["ones"]) == {("viirs", "s2"), ("viirs", "s1"), ("viirs", "worldcover"),
                                            ("s1", "s2"), ("worldcover", "s2")}
    text = p2.describe_consistency(cons, p2.rank_consistency(p2.strategy_ranks(p2.PUBLISHED_FIG6)))
    assert "not the same for both occluders" in text["ours"]
    assert "with ones, the order is Night Lights > Sentinel-1 > Land Cover > Sentinel-2" in text["ours"]
    assert "not fully consistent either" in text["published"]
    with pytest.raises(ValueError, match="reference fill"):
        p2.rank_consistency(ranks, "gaussian")
    with pytest.raises(ValueError, match="no distances for group"):
        p2.strategy_ranks({"zeros": {"s2": 1.0, "s1": 2.0}})


def test_published_fig6_is_not_consistent_and_fig5_agreement():
    cons = p2.rank_consistency(p2.strategy_ranks(p2.PUBLISHED_FIG6))
    assert not cons["consistent"] and cons["reference"] == "zeros" and set(cons["top"].values()) == {"s2"}
    assert cons["changes"]["gaussian"] == [("worldcover", "s1")]
    same = p2.rank_consistency(p2.strategy_ranks({f: p2.PUBLISHED_FIG6["zeros"] for f in p2.FILLS}))
    assert same["consistent"] and same["changes"] == {}
    assert p2.describe_consistency(same, same)["published"].endswith("as ours are.")


def _summary(dist_by_setting):
    rows = [{"setting": s, "planted": planted, "model": model, "fill": "zeros", "group": g, "distance": d}
            for s, (planted, model, ds) in dist_by_setting.items()
            for g, d in zip(("s2", "s1", "viirs", "all"), ds)]
    return p2.planted_summary(pd.DataFrame(rows))


def test_planted_verdict_counts_and_words():
    ok = _summary({"s2_dominant": ("s2", "trained", (6, 1, 0.1, 9)), "s1_dominant": ("s1", "trained", (1, 6, 0.1, 9))})
    v = p2.planted_verdict(ok)
    assert (v["n_recovered"], v["n_cases"], v["flips"]) == (2, 2, True)
    assert v["recovered_text"].endswith("in both settings") and v["right_way"] == ["zeros"]
    assert v["s2_over_s1"] == pytest.approx({"s2_dominant": 6.0, "s1_dominant": 1 / 6})
    # the same winner in both settings: one recovered, no flip, ratio moved the wrong way
    stuck = _summary({"s2_dominant": ("s2", "trained", (1, 6, 0.1, 9)),
                      "s1_dominant": ("s1", "trained", (2, 6, 0.1, 9))})
    v = p2.planted_verdict(stuck)
    assert (v["n_recovered"], v["flips"], v["flip_text"]) == (1, False, "does not flip")
    assert v["recovered_text"] == "recovers the planted modality only in s1_dominant" and v["right_way"] == []
    assert (v["untrained_recovered"], v["untrained_cases"]) == (0, 0)
    with pytest.raises(ValueError, match="planted_summary"):
        p2.planted_verdict(ok.drop(columns="top"))


def test_planted_truth_records_wall_time(tiny):
    cfg, _, base = tiny
    out = base / "planted"
    settings = {"s2_dominant": p2.PLANTED["s2_dominant"]}
    dist, summary = p2.planted_truth(cfg, out, "cpu", settings=settings, cache=base / "cache", progress=False)
    assert set(dist["model"]) == {"trained", "untrained"} and set(summary["setting"]) == {"s2_dominant"}
    prov = read_results(out / "planted" / "s2_dominant" / "results.json").attrs["provenance"]
    assert prov["wall_time_s"] > 0 and 0 < prov["train_time_s"] <= prov["wall_time_s"]
    assert prov["planted"] == "s2_dominant"


def test_estimate_echoes_its_assumptions():
    est = p2.estimate_paper_hours(flops_per_sample=1e11, gpu_tflops=50.0, workers=2)
    paper = p2.PROFILES["paper"]
    assert (est["n_train"], est["n_val"], est["workers"], est["gpu_tflops"]) == (815, 102, 2, 50.0)
    assert (est["epochs"], est["n_seeds"], est["crop_size"]) == (paper.epochs, len(paper.seeds), paper.crop_size)
    assert est["epoch_compute_s"] == pytest.approx((815 * 1e11 + 102 * 1e11 / 3) / 50e12)
