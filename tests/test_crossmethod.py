"""Which modality matters?: the captum cross-checks, the configuration, and the whole chain — planted grid, every
method on the trained and the null model, costs on the same batch, the method table and its recommendation — on a
tiny simulated MapInWild."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from fusionbook.attribution import output_occlusion
from fusionbook.experiments import crossmethod as cm
from fusionbook.experiments import paper2 as p2
from fusionbook.experiments import planted as pt
from fusionbook.experiments.recipe import Run, resolve
from fusionbook.modality import MAPINWILD
from fusionbook.results import read_results

MOD = p2.MODALITIES
TINY = dict(base_channels=4, crop_size=16, sim_tiles=10, sim_tile_size=32, batch_size=2, epochs=1, eval_batch_size=4,
            planted_tiles=10, planted_crop_size=16, planted_epochs=1, seeds=(0, 1), planted_seeds=(0, 1),
            strengths=(1.0,), svs_samples=3, cost_repeats=1)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared CPU
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(1)
    model = p2.build_model(p2.PROFILES["smoke"].replace(base_channels=4), 14).eval()
    x = torch.randn(4, 14, 16, 16)
    probe = cm.Probe(MAPINWILD.layout(MOD), MOD, means=torch.randn(14), svs_samples=5, seed=3)
    return model, x, probe


def test_captum_feature_ablation_equals_output_occlusion(small):
    model, x, probe = small
    for fill in ("zeros", "mean"):
        captum = cm._captum("FeatureAblation", fill)(model, x, probe)
        with torch.no_grad():
            ours = output_occlusion(model, x, probe.layout, MOD, probe.fill(fill), reduce="mean")
        torch.testing.assert_close(captum, ours, atol=1e-5, rtol=0)
    a = cm.attribute(cm.METHODS["captum FeatureAblation (zeros)"], model, x, probe, batch_size=3)  # two batches
    b = cm.attribute(cm.METHODS["output occlusion (zeros)"], model, x, probe)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_exact_shapley_matches_captum_and_sampling_is_seeded(small):
    model, x, probe = small
    exact = cm.attribute(cm.METHODS["captum ShapleyValues (zeros)"], model, x, probe)
    g = cm.mean_output(model)
    with torch.no_grad():
        torch.testing.assert_close(exact.sum(1), g(x) - g(torch.zeros_like(x)), atol=1e-5, rtol=0)  # efficiency
    if "exact Shapley (zeros)" in cm.METHODS:
        torch.testing.assert_close(cm.attribute(cm.METHODS["exact Shapley (zeros)"], model, x, probe), exact,
                                   atol=1e-5, rtol=0)
    svs = cm.METHODS["captum ShapleyValueSampling (zeros)"]
    torch.testing.assert_close(cm.attribute(svs, model, x, probe), cm.attribute(svs, model, x, probe))
    state = torch.get_rng_state()
    cm.attribute(svs, model, x, probe)
    assert torch.equal(state, torch.get_rng_state())  # the sampling does not consume the global generator


def test_bad_inputs_name_the_problem(small):
    model, x, probe = small
    with pytest.raises(ValueError, match="Probe.means"):
        dataclasses.replace(probe, means=None).fill("mean")
    with pytest.raises(ValueError, match=r"\(B, 14, H, W\)"):
        cm.attribute(cm.METHODS["output occlusion (zeros)"], model, x[:, :5], probe)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        cm.importance(torch.zeros(3, 2), MOD)
    with pytest.raises(ValueError, match="strengths"):
        resolve(cm.PROFILES, "smoke", {"strengths": [0.5, 0.5]})
    with pytest.raises(ValueError, match="planted_null"):
        resolve(cm.PROFILES, "smoke", {"planted_null": "shuffled"})


def test_profiles_use_paper2_planted_recipe_and_say_what_the_grid_is():
    smoke, paper = cm.PROFILES["smoke"], cm.PROFILES["paper"]
    for name in ("planted_epochs", "planted_crop_size", "planted_lr", "planted_tiles", "base_channels"):
        assert getattr(smoke, name) == getattr(p2.PROFILES["smoke"], name)
        assert getattr(paper, name) == getattr(p2.PROFILES["paper"], name)
    assert [s.name for s in cm.grid(smoke)] == ["s2 @ 1", "s1 @ 1", "worldcover @ 1", "viirs @ 1", "s1 @ 0.5"]
    assert len(cm.grid(paper)) == 8 and len(smoke.planted_seeds) == 2


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("crossmethod")
    torch.set_num_threads(1)
    run = Run.start("crossmethod", cm.PROFILES, profile="smoke", out_dir=base / "out", dataset="mapinwild",
                    simulate=cm.simulation, cache=base / "cache", overrides=dict(TINY))
    task, log = cm.crossmethod_task(run)
    settings = cm.grid(run.cfg)[:2]
    verdicts, scores = pt.run_planted(task, settings, run.cfg.planted_seeds, progress=False)
    yield run, task, log, settings, verdicts, scores
    run.close()


def test_every_method_scores_trained_and_null_models(grid_run):
    run, task, log, settings, verdicts, scores = grid_run
    assert set(verdicts["method"]) == set(cm.METHODS)
    assert set(verdicts["model"]) == {"trained", "null"}
    assert len(verdicts) == len(settings) * 2 * len(cm.METHODS) * 2
    # 2 settings × 2 seeds × (full model + 4 left-out models + the random null)
    assert len(log) == 2 * 2 * 6 and sum(r["null"] for r in log) == 4
    wide = scores.pivot_table(index=["setting", "seed", "model", "modality"], columns="method", values="importance")
    np.testing.assert_allclose(wide["captum FeatureAblation (zeros)"], wide["output occlusion (zeros)"], atol=1e-5)
    assert (scores.loc[scores["method"] != "retrain oracle", "importance"] >= 0).all()


def test_costs_table_recommendation_and_rows(grid_run):
    run, task, log, settings, verdicts, scores = grid_run
    d = task.data(settings[0])
    model = task.train(d, MOD, 0, False)
    assert model.skipped  # read back from its checkpoint, not retrained
    pc = p2.planted_config(run.cfg)
    test = p2.load_split(pc, d, "test")
    x = torch.stack([test[i]["image"] for i in range(len(test))])
    probe = cm.Probe(MAPINWILD.layout(MOD), MOD, pt.channel_means(p2.load_split(pc, d, "train", train=False)), 3, 0)
    costs = cm.method_costs(model.model, x, probe, cm.METHODS, repeats=1)
    c = costs.set_index("method")
    assert c.loc["output occlusion (zeros)", "forward_passes"] == pytest.approx(5.0, rel=1e-6)
    assert c.loc["captum FeatureAblation (zeros)", "forward_passes"] == pytest.approx(5.0, rel=1e-6)
    assert c.loc["captum ShapleyValues (zeros)", "forward_passes"] == pytest.approx(97.0, rel=1e-6)  # 4!·4 + 1
    sizes = [len(p2.load_split(pc, d, s)) for s in ("train", "validation", "test")]
    oracle = cm.oracle_cost(run.cfg, log, x, *sizes)
    seen = (sizes[0] // pc.batch_size) * pc.batch_size * pc.epochs  # training crops seen per left-out model
    # a training step costs 2–3.5 forward passes; plus the validation and test passes; in batches of len(x)
    assert 4 * seen * 2 / len(x) < oracle["forward_passes"] < 4 * (seen * 3.5 + sizes[1] + sizes[2]) / len(x)
    assert oracle["seconds"] > 0
    costs = pd.concat([costs, pd.DataFrame([{"method": "retrain oracle", **oracle}])], ignore_index=True)
    table = cm.method_table(verdicts, scores, costs)
    assert list(table["method"]) == [*cm.METHODS, "retrain oracle", "null model"]
    assert table.loc[table["method"] == "retrain oracle", "needs_retraining"].item()
    n_learned = int(verdicts[verdicts["model"] == "trained"].drop_duplicates(["setting", "seed"])["learned"].sum())
    assert (table.loc[~table["reference"], "n_learned"] == n_learned).all()
    ok = table[~table["reference"]].dropna(subset=["tau_oracle"])
    assert ok["tau_oracle"].between(-1, 1).all()
    rec = cm.recommend(table)
    assert rec["best"] is None if ok.empty else rec["best"] in set(cm.METHODS)
    for r in table.to_dict("records"):
        v = r["tau_oracle"]
        run.writer.add("Method table", r["method"], "tau_oracle", None if not np.isfinite(v) else float(v))
    rows = read_results(run.writer.path)
    assert set(rows.loc[rows["table"] == "Method table", "setting"]) == set(table["method"])
    assert (rows["config"] == run.digest).all()
    fig = cm.plot_methods(table)
    assert len(fig.axes) == 2


def _task_models():
    "One small model per task of the book, with the layout and the groups its input is stacked in."
    from fusionbook.models.fusion import EarlyFusionResNet
    from fusionbook.models.mmtm import DualStreamUNetMMTM, paper4_layout
    from fusionbook.models.resnet_unet import ResNetUNet

    torch.manual_seed(0)
    lay = MAPINWILD.layout(MOD)
    return {
        "regression": (p2.build_model(p2.PROFILES["smoke"].replace(base_channels=4), 14), lay, MOD, 32),
        "segmentation": (ResNetUNet(14, 1, encoder_depth=18), lay, MOD, 32),
        "multi-label": (EarlyFusionResNet(lay, num_classes=5, depth=18), lay, MOD, 32),
        "segmentation, no encode": (DualStreamUNetMMTM(topology=(8, 16)), paper4_layout(), ("s1", "s2"), 16),
    }


@pytest.mark.parametrize("task", ["regression", "segmentation", "multi-label"])
def test_every_method_runs_on_the_tasks_it_claims(task):
    model, lay, groups, size = _task_models()[task]
    model.eval()
    x = torch.randn(2, lay.n_channels, size, size)
    probe = cm.Probe(lay, tuple(groups), torch.zeros(lay.n_channels), svs_samples=2, seed=0)
    for m in cm.METHODS.values():
        assert task in m.tasks, m.name
        a = cm.attribute(m, model, x, probe)
        assert a.shape == (2, len(groups)) and torch.isfinite(a).all(), m.name


def test_embedding_distance_names_the_missing_encoder():
    model, lay, groups, size = _task_models()["segmentation, no encode"]
    x = torch.randn(2, lay.n_channels, size, size)
    probe = cm.Probe(lay, tuple(groups), torch.zeros(lay.n_channels), svs_samples=2, seed=0)
    for m in cm.METHODS.values():
        if "encode" in m.requires:
            with pytest.raises(TypeError, match="encode"):
                cm.attribute(m, model.eval(), x, probe)
        else:
            assert cm.attribute(m, model.eval(), x, probe).shape == (2, 2), m.name


def test_faithfulness_of_the_grid(grid_run):
    run, task, log, settings, verdicts, scores = grid_run
    none = cm.faithfulness_table(task, run.cfg, settings, verdicts.assign(learned=False), scores)[0]
    assert none.empty  # only the cases whose model passed the gate are scored
    # the tiny models need not pass the gate: score every case to exercise the whole chain
    rows, curves = cm.faithfulness_table(task, run.cfg, settings, verdicts.assign(learned=True), scores)
    assert len(rows.drop_duplicates(["setting", "seed"])) == len(settings) * len(run.cfg.planted_seeds)
    assert set(rows["ranking"]) == set(scores.loc[scores["model"] == "trained", "method"]) | {"null model"}
    f = rows["faithfulness"].dropna()
    assert (f <= 1 + 1e-9).all()
    # every curve of a case starts at the clean MAE and ends with every modality occluded
    for _, c in curves.groupby(["setting", "seed"]):
        ends = c.groupby("ranking")["mae"].agg(["first", "last"])
        np.testing.assert_allclose(ends["first"], ends["first"].iloc[0], rtol=1e-6)
        np.testing.assert_allclose(ends["last"], ends["last"].iloc[0], rtol=1e-6)
    costs = pd.DataFrame([{"method": m, "forward_passes": 1.0, "seconds": 0.1} for m in cm.METHODS])
    table = cm.method_table(verdicts, scores, costs, faithful=rows)
    assert {"faithfulness", "faithfulness_sd", "tasks", "requires"} <= set(table.columns)
    assert len(cm.plot_deletion(curves).axes) == 1


def test_families_put_the_papers_methods_beside_the_books(grid_run):
    """The influence head (paper 1) and the CUR (paper 4) run through the harness on tiny versions of their planted
    truths, with the book's methods scored on the same models; the family table names each paper's own method and
    the occlusion oracle."""
    from fusionbook.experiments import paper1 as p1
    from fusionbook.experiments import paper4 as p4

    run = grid_run[0]
    frun = dataclasses.replace(run, cfg=run.cfg.replace(family_seeds=(0,)))
    f1 = cm.paper1_family(frun, cfg=p1.PROFILES["smoke"].replace(
        sim_tile_size=32, eval_batch_size=4, planted_tiles=10, planted_epochs=1, planted_batch_size=2))
    f4 = cm.paper4_family(frun, cfg=p4.PROFILES["smoke"].replace(planted_n=20, planted_epochs=1))
    assert (f1.seeds, f4.seeds) == ((0,), (0,))
    assert not (f1.task.retrain_oracle or f4.task.retrain_oracle)  # the smoke profile: test-time occlusion
    again = dataclasses.replace(run, cfg=run.cfg.replace(family_seeds=(0,), family_retrain=True))
    assert cm.paper4_family(again, cfg=p4.PROFILES["smoke"]).task.retrain_oracle
    for f in (f1, f4):
        f.settings = f.settings[:1]
    verdicts, scores = cm.run_families([f1, f4], progress=False)
    assert set(verdicts["method"]) == {"influence score", "CUR", *cm.FAMILY_METHODS}
    assert len(verdicts) == 2 * 2 * (1 + len(cm.FAMILY_METHODS))  # families × {trained, null} × methods
    imp = scores[(scores["family"] == f4.name) & (scores["model"] == "trained")]
    assert set(imp["modality"]) == set(p4.MODALITIES) and np.isfinite(imp["importance"]).all()
    table = cm.family_table(verdicts, [f1, f4])
    own = table[table["own"]].set_index("family")["method"].to_dict()
    assert own == {f1.name: "influence score", f4.name: "CUR"}
    assert table.loc[table["reference"], "method"].tolist() == ["occlusion oracle"] * 2
    assert table.loc[table["family"] == f4.name, "tau_oracle"].isna().all()  # two modalities: no τ
    with pytest.raises(ValueError, match="family_seeds"):
        run.cfg.replace(family_seeds=(1, 1))
