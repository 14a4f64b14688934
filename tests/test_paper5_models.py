"""Paper 5 models at full width: shapes, per-sample replacement of the optical features, training, attribution."""

import pytest
import torch

from fusionbook.attribution.occlusion import embedding_distance, output_occlusion
from fusionbook.modality import SPACENET7
from fusionbook.models.reconstruction import (
    DualStreamUNet,
    ReconstructionLoss,
    ReconstructionUNet,
    UNetS1,
    reconstruction_loss,
)


@pytest.fixture(scope="module")
def full():
    torch.manual_seed(0)
    return ReconstructionUNet().eval()


def test_full_width_shapes(full):
    # paper 5: (B, 2, 64, 64) + (B, 4, 64, 64) -> F_S1, F_S2, F̂_S2 (B, 64, 64, 64) -> logits (B, 1, 64, 64)
    x = torch.rand(2, 6, 64, 64)
    with torch.no_grad():
        out = full.outputs(x, [False, True])
    for k in ("f_s1", "f_s2", "f_s2_hat"):
        assert out[k].shape == (2, 64, 64, 64)
    for k in ("logits_s1s2", "logits_s1", "logits"):
        assert out[k].shape == (2, 1, 64, 64)


def test_full_width_batch_of_one_equals_batch_of_many(full):
    torch.manual_seed(1)
    x = torch.rand(3, 6, 32, 32)
    missing = torch.tensor([True, False, True])
    with torch.no_grad():
        many = full(x, missing)
        ones = torch.cat([full(x[i : i + 1], missing[i : i + 1]) for i in range(3)])
        f1, fh, f2 = full.s1(x[:, :2]), full.recon(x[:, :2]), full.s2(x[:, 2:])
        expected = torch.where(missing[:, None, None, None], full.fuse(f1, fh), full.fuse(f1, f2))
    torch.testing.assert_close(many, ones, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(many, expected, atol=1e-5, rtol=1e-4)


def test_training_steps_lower_the_loss():
    # a narrow model overfits one mixed batch: the per-sample loss of paper 5 falls under AdamW
    torch.manual_seed(2)
    model = ReconstructionUNet(topology=(4, 8)).train()
    x = torch.rand(6, 6, 16, 16)
    y = (x[:, :1] > 0.5).float()  # learnable from S1 alone
    missing = torch.tensor([False, True, False, False, True, False])
    loss_fn = ReconstructionLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        terms = loss_fn(model.outputs(x, missing), y)
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert losses[-1] < 0.6 * losses[0], losses
    out = model.outputs(x, missing)
    direct = reconstruction_loss(out["logits_s1s2"], out["logits_s1"], out["f_s2"], out["f_s2_hat"], y, missing)["loss"]
    torch.testing.assert_close(loss_fn(out, y)["loss"], direct)


@pytest.mark.parametrize("cls", [UNetS1, DualStreamUNet, ReconstructionUNet])
def test_attribution_runs_on_the_stacked_tensor(cls):
    # the book's occlusion methods call model(x) / model.encode(x) on the stacked (B, 6, H, W) tensor
    torch.manual_seed(3)
    model = cls(topology=(8, 16)).eval()
    layout = SPACENET7.layout()
    x = torch.rand(3, 6, 16, 16)
    a = output_occlusion(model, x, layout, ["s1", "s2"])
    assert a.shape == (3, 2) and torch.isfinite(a).all()
    d = embedding_distance(model, x, layout, ["s1", "s2"])
    assert d.shape == (3, 2) and (d[:, 0] > 0).all()
    if cls is UNetS1:  # the S1-only model does not see the optical channels
        assert (a[:, 1] == 0).all() and (d[:, 1] == 0).all()
    else:
        assert (d[:, 1] > 0).all()


def test_bad_inputs_name_the_model():
    model = DualStreamUNet(topology=(8, 16))
    with pytest.raises(ValueError, match="DualStreamUNet.*\\(B, 6, H, W\\)"):
        model(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="3 per-sample flags"):
        model(torch.rand(3, 6, 16, 16), [True])
    with pytest.raises(ValueError, match="too small"):
        model(torch.rand(1, 6, 2, 2))
