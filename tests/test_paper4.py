"""Paper 4 experiment module: profiles, published tables, one short training through the recipe, and the
`paper`-profile dry run (two steps at the paper's sizes on simulated data)."""

from pathlib import Path

import pytest
import torch

from fusionbook.experiments import paper4 as p4
from fusionbook.experiments.recipe import Run


def test_paper_profile_matches_the_paper():
    p = p4.PROFILES["paper"]
    assert (len(p.seeds), p.epochs, p.batch_size, p.lr, p.weight_decay, p.topology) == (5, 15, 8, 1e-4, 0.01,
                                                                                          (64, 128))
    assert sum(q.numel() for q in p4.build_model(p).parameters()) == 2_526_594
    with pytest.raises(ValueError, match="lr"):
        p.replace(lr=0.0)


def test_published_tables():
    t = p4.published_table1()
    assert list(t["Prediction"]) == ["SAR", "Optical", "Fusion"] and t.loc[0, "Recall"] == "0.557 ± 0.014"
    assert p4.PUBLISHED_CUR["|d_util|"] == (0.20, 0.14)


def _run(tmp_path: Path, profile: str = "smoke", **overrides) -> Run:
    return Run.start("paper4", p4.PROFILES, profile=profile, out_dir=tmp_path / "out", dataset="sen12gum",
                     simulate=p4.simulation, cache=tmp_path / "cache", device="cpu", overrides=overrides)


def test_smoke_training_and_rates(tmp_path: Path):
    run = _run(tmp_path, seeds=(0,), epochs=1, sim_n=20)
    t = p4.train_variant(run, p4.MODALITIES, 0)
    assert all(int(m.n_mean) == len(p4.load_split(run.cfg, run.data, "train")) for m in t.model.mmtms)
    rates = p4.test_rates(run, t)
    rows = p4.table1_rows(rates, 0)
    assert {r["metric"] for r in rows if r["table"] == "CUR"} >= {"u(sar|opt)", "u(opt|sar)", "|d_util|"}
    # read back: the same model, its means recomputed
    again = p4.train_variant(run, p4.MODALITIES, 0)
    assert again.skipped
    for a, b in zip(t.model.mmtms, again.model.mmtms):
        torch.testing.assert_close(a.sar_mean, b.sar_mean)
    drop = p4.occlusion_f1_drop(t.model, run.cfg, run.data)
    assert set(drop) == {"s1", "s2"}
    assert 0 < p4.chance_f1(run.cfg, run.data) < 1


@pytest.mark.slow
def test_paper_profile_dry_run(tmp_path: Path):
    "Two optimiser steps of the paper's network at 256×256 on simulated data in the real layout."
    from fusionbook.data.simulate import simulate

    root = simulate("sen12gum", tmp_path / "gum", n=24, seed=0, patch_size=256, test_aois=1)
    run = Run.start("paper4", p4.PROFILES, profile="paper", data_root=root, out_dir=tmp_path / "out",
                    dataset="sen12gum", device="cpu", overrides={"max_steps": 2, "seeds": (0,), "num_workers": 0})
    t = p4.train_variant(run, p4.MODALITIES, 0)
    assert t.summary["epochs_run"] == 1
    assert sum(p.numel() for p in t.model.parameters()) == 2_526_594
