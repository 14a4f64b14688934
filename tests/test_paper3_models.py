"""Slower tests of paper 3's fusion network, OOD detectors and OOD-aware fusion (models.fusion, ood)."""

import pytest
import torch
from torch import nn

from fusionbook.attribution import embedding_distance, output_occlusion
from fusionbook.modality import BIGEARTHNET
from fusionbook.models.fusion import (
    MULTISHOT_WEIGHTS,
    EarlyFusionResNet,
    MultishotFusionNet,
    multishot_loss,
    multishot_losses,
    split_multishot,
)
from fusionbook.ood import (
    OODAwareFusion,
    OODDetector,
    branch_feature_size,
    frozen_embedding,
    ood_aware_fusion,
    train_ood_detector,
)
from fusionbook.train import DictDataset, Task, fit

BEN = BIGEARTHNET.layout()


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_resnet50_shapes_on_bigearthnet_patches():
    """ResNet-50 on 120×120: branch maps (B, 2048, 4, 4), multishot logits (3B, 12), OOD input 32,768."""
    torch.manual_seed(0)
    net = MultishotFusionNet(BEN, num_classes=12, depth=50).eval()
    x = torch.randn(2, 14, 120, 120)
    with torch.no_grad():
        f_sar, f_opt = net.branch_features(x)
        assert f_sar.shape == f_opt.shape == (2, 2048, 4, 4)
        assert net.multishot(x).shape == (6, 12)
        assert net.encode(x).shape == (2, 4096, 4, 4)
    assert frozen_embedding(net.sar_branch, x[:, :2]).shape == (2, 32_768)
    assert branch_feature_size(net.opt_branch, 120) == 32_768


def test_stem_relu_switch_changes_no_parameter():
    a = MultishotFusionNet(BEN, 12, depth=18, stem_relu=True)
    b = MultishotFusionNet(BEN, 12, depth=18, stem_relu=False)
    assert n_params(a) == n_params(b) == 23_415_124
    assert isinstance(b.sar_branch.relu, nn.Identity)


def test_switched_off_branch_gets_no_gradient_from_its_head():
    """λ = 0 means zeros in place of the branch's features: the SAR-only loss never reaches the optical branch."""
    torch.manual_seed(0)
    net = MultishotFusionNet(BEN, num_classes=4, depth=18)
    x, y = torch.randn(4, 14, 32, 32), torch.randint(0, 2, (4, 4)).float()
    losses = multishot_losses(net.multishot(x), y)
    losses["sar"].backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.opt_branch.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.sar_branch.parameters())
    net.zero_grad(set_to_none=True)
    losses["opt"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.sar_branch.parameters())


def test_multishot_training_through_fit_reduces_the_loss():
    """The 2:1:1 loss as named losses + weights in the book's training engine; a few epochs fit 16 samples."""
    torch.manual_seed(0)
    x = torch.randn(16, 14, 16, 16)
    y = (x[:, :4].mean((2, 3)) > 0).float()  # learnable labels from the SAR/optical channels
    data = DictDataset(image=x, label=y)
    task = Task(forward=lambda m, b: m.multishot(b["image"]),
                loss=lambda out, b: multishot_losses(out, b["label"]), loss_weights=MULTISHOT_WEIGHTS)
    net = MultishotFusionNet(BEN, num_classes=4, depth=18)
    with torch.no_grad():
        before = multishot_loss(net.eval().multishot(x), y).item()
    res = fit(net, task, data, epochs=4, batch_size=8, lr=1e-3, device="cpu", amp=False, progress=False)
    with torch.no_grad():
        after = multishot_loss(net.eval().multishot(x), y).item()
    assert len(res.history) == 4
    assert after < before, (before, after)
    assert set(split_multishot(net.multishot(x[:2]))) == {"fuse", "sar", "opt"}


def test_attribution_runs_on_the_fusion_models():
    """The stacked input + layout make every attribution method of the book run on paper 3's models."""
    torch.manual_seed(0)
    net = MultishotFusionNet(BEN, num_classes=3, depth=18).eval()
    n = branch_feature_size(net.sar_branch, 64)
    full = OODAwareFusion(net, OODDetector(n, (8,)), OODDetector(n, (8,))).eval()
    base = EarlyFusionResNet(BEN, num_classes=3, depth=18).eval()
    x = torch.randn(2, 14, 64, 64)
    with torch.inference_mode():
        for model, emb in ((net, 1024), (full, 1024), (base, 512)):
            d = embedding_distance(model, x, BEN, ["s1", "s2", "all"])
            assert d.shape == (2, 3) and (d >= 0).all()
            assert output_occlusion(model, x, BEN, ["s1", "s2"]).shape == (2, 2)
            assert model.encode(x).shape == (2, emb, 2, 2)
        # occluding the optical modality with zeros changes the fused embedding only in its optical half
        x_occ = x.clone()
        x_occ[:, 2:] = 0
        e0, e1 = net.encode(x), net.encode(x_occ)
        torch.testing.assert_close(e0[:, :512], e1[:, :512])
        assert not torch.allclose(e0[:, 512:], e1[:, 512:])


def test_ood_detector_training_separates_shifted_optical_data():
    """A frozen ResNet-18 optical branch + the paper's detector learn ID (noise) vs OOD (brightened noise)."""
    torch.manual_seed(0)
    net = MultishotFusionNet(BEN, num_classes=3, depth=18).eval()
    branch = net.branch("s2")
    x_id = [{"s2": torch.randn(8, 12, 16, 16)} for _ in range(3)]
    x_ood = [{"s2": torch.randn(8, 12, 16, 16) * 0.3 + 2.0} for _ in range(3)]
    before = {k: v.clone() for k, v in branch.state_dict().items()}
    det = OODDetector(branch_feature_size(branch, 16))
    hist = train_ood_detector(det, branch, x_id, x_ood, epochs=4, lr=1e-3, augment=True, key="s2",
                              generator=torch.Generator().manual_seed(0))
    assert hist[-1] < hist[0]
    for k, v in branch.state_dict().items():  # frozen: weights and BN running statistics unchanged
        torch.testing.assert_close(v, before[k])
    with torch.no_grad():
        p_id = torch.cat([det.p_in(frozen_embedding(branch, b["s2"])) for b in x_id])
        p_ood = torch.cat([det.p_in(frozen_embedding(branch, b["s2"])) for b in x_ood])
    assert p_id.mean() > 0.8 and p_ood.mean() < 0.2, (p_id.mean(), p_ood.mean())


@pytest.mark.parametrize("p_s,p_o", [(0.9, 0.2), (0.5, 0.5), (0.0, 1.0), (0.3, 0.0)])
def test_bernoulli_fusion_is_the_expectation_over_sampled_switches(p_s, p_o):
    """Eq. 3 equals the Monte-Carlo mean of f_c(λ_SAR, λ_opt) with λ ~ Ber(p) drawn independently."""
    g = torch.Generator().manual_seed(0)
    heads = torch.tensor([[0.5, 0.3], [0.6, 0.8]])  # heads[λ_SAR, λ_opt]
    n = 400_000
    ls = (torch.rand(n, generator=g) < p_s).long()
    lo = (torch.rand(n, generator=g) < p_o).long()
    mc = heads[ls, lo].mean().item()
    exact = ood_aware_fusion(p_s, p_o, *(heads[k].view(1, 1) for k in ((1, 1), (1, 0), (0, 1)))).item()
    assert abs(mc - exact) < 5e-3
