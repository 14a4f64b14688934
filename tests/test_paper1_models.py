"""Paper 1: the ResNet-34 U-Net, the influence framework and its batched MODO scores at full model size."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusionbook.attribution.influence import dataset_scores, influence_scores, influence_scores_loop
from fusionbook.attribution.occlusion import mean_influence, occlude
from fusionbook.modality import MAPINWILD, PAPER1_GROUPS
from fusionbook.models.resnet_unet import InfluenceUNet, ResNetUNet


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def layout():
    return MAPINWILD.layout()


@pytest.fixture(scope="module")
def fw(layout):
    torch.manual_seed(0)
    return InfluenceUNet(layout)


@pytest.fixture(scope="module")
def batch(layout):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, layout.n_channels, 64, 64, generator=g)


def test_parameter_counts(layout, fw):
    assert n_params(ResNetUNet(3, 1)) == 24_436_369  # segmentation-models-pytorch Unet("resnet34", classes=1)
    assert n_params(ResNetUNet(14, 1)) == 24_470_865
    assert n_params(fw) == 24_512_530
    parts = (fw.encoder, fw.decoder, fw.score_encoder, fw.head, fw.influence_head)
    assert [n_params(m) for m in parts] == [21_319_168, 3_151_552, 40_576, 721, 513]


def test_batched_scores_equal_the_loop_in_eval(layout, fw, batch):
    fw.eval()
    with torch.no_grad():
        ref = influence_scores_loop(fw, batch, layout)
        for cs in (None, 3, "pass"):
            torch.testing.assert_close(influence_scores(fw, batch, layout, chunk_size=cs), ref, rtol=1e-4, atol=1e-5)
        logits, s = fw(batch)
        torch.testing.assert_close(s, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fw.forward_with_scores(batch, ref)[0], logits, rtol=1e-4, atol=1e-4)


def test_every_sample_every_band_is_occluded(layout, fw, batch):
    """Sample 1's score is the score of sample 1 with *all* bands of the group zeroed (the authors' code occluded
    only sample 0 and only the first band)."""
    fw.eval()
    with torch.no_grad():
        s = fw.scores(batch)
        clean = fw.influence(fw.encode(batch))
        for n, g in enumerate(PAPER1_GROUPS):
            idx = layout.indices(g)
            full = fw.influence(fw.encode(occlude(batch, idx)))
            torch.testing.assert_close(s[:, n], full, rtol=1e-4, atol=1e-5)
            assert (s[1, n] - clean[1]).abs() > 1e-6, g  # sample 1 was occluded too
            if len(idx) > 1:
                first = fw.influence(fw.encode(occlude(batch, idx[:1])))
                assert (s[:, n] - first).abs().max() > 1e-6, g  # more than the first band


def test_training_step_matches_the_authors_loop(layout, fw, batch):
    """With one encoder pass per group (chunk_size='pass') the framework's training step computes the same loss
    and gradients as the authors' N full forward passes."""
    y = (batch[:, :1] > 0).float()
    ours = copy.deepcopy(fw).train()
    ours.chunk_size = "pass"
    theirs = copy.deepcopy(fw).train()
    lo = F.binary_cross_entropy_with_logits(ours(batch)[0], y)
    s = influence_scores_loop(theirs, batch, layout)
    lt = F.binary_cross_entropy_with_logits(theirs.forward_with_scores(batch, s)[0], y)
    torch.testing.assert_close(lo, lt, rtol=1e-5, atol=1e-6)
    lo.backward()
    lt.backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert ours.influence_head[2].weight.grad.abs().sum() > 0


def test_joint_batch_norm_in_training_differs_but_runs(layout, fw, batch):
    "Default chunk_size=None normalises all N·B copies together in training mode: scores in (0, 1), shape (B, N)."
    m = copy.deepcopy(fw).train()
    logits, s = m(batch)
    assert logits.shape == (2, 1, 64, 64) and s.shape == (2, 6)
    assert ((s > 0) & (s < 1)).all()


def test_dataset_scores_and_mean(layout, fw, batch):
    loader = torch.utils.data.DataLoader(
        [{"image": batch[i], "id": f"tile{i}"} for i in range(2)], batch_size=1
    )
    df = dataset_scores(fw, loader, layout, progress=False)
    assert list(df.columns) == ["id", *PAPER1_GROUPS] and df["id"].tolist() == ["tile0", "tile1"]
    with torch.no_grad():
        ref = fw.eval().scores(batch)
    torch.testing.assert_close(torch.tensor(df[list(PAPER1_GROUPS)].values, dtype=torch.float32), ref,
                               rtol=1e-4, atol=1e-5)
    assert list(mean_influence(df).index) == list(PAPER1_GROUPS)


def test_bad_inputs(layout, fw):
    with pytest.raises(ValueError, match="multiples of 32"):
        fw(torch.randn(1, 14, 40, 64))
    with pytest.raises(TypeError, match="StackLayout"):
        InfluenceUNet(["s1"])
    with pytest.raises(ValueError, match="chunk_size"):
        influence_scores(fw, torch.randn(1, 14, 32, 32), layout, chunk_size="batch")
