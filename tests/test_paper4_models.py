"""Paper 4 (MMTM dual-stream U-Net, conditional utilization rates): slower checks on full-size inputs and on the
SEN12_GUM loader (simulated data in a temporary folder)."""

from pathlib import Path

import pytest
import torch

from fusionbook.attribution.utilization import CutOffModel, cut_off_scores, utilization_rates
from fusionbook.data.sen12gum import SEN12GUM, simulate_sen12gum
from fusionbook.losses import power_jaccard_loss
from fusionbook.models.mmtm import MMTM, DualStreamUNetMMTM, compute_squeeze_means, squeeze


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_full_size_shapes_and_counts():
    net = DualStreamUNetMMTM().eval()
    assert _n_params(net) == 2_526_594
    assert sum(b.numel() for n, b in net.named_buffers() if n.endswith(("sar_mean", "optical_mean"))) == 768
    seen = []

    def hook(mod, args, out):
        seen.append((tuple(squeeze(args[0]).shape), mod.hidden))

    hooks = [m.register_forward_hook(hook) for m in net.mmtms]
    with torch.no_grad():
        y = net(torch.rand(1, 6, 256, 256))
    for h in hooks:
        h.remove()
    assert y.shape == (1, 2, 256, 256)
    # squeeze dims 64/128 per modality, Z dims 256/512
    assert seen == [((1, 64), 256), ((1, 128), 512), ((1, 128), 512),
                                                          ((1, 64), 256)]


def test_means_travel_with_the_state_dict(tmp_path: Path):
    net = DualStreamUNetMMTM(topology=(4, 8))
    for m in net.mmtms:
        m.set_means(torch.rand(m.sar_channels), torch.rand(m.optical_channels), n=5)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    other = DualStreamUNetMMTM(topology=(4, 8))
    other.load_state_dict(torch.load(tmp_path / "w.pt"))
    for a, b in zip(net.mmtms, other.mmtms):
        assert torch.equal(a.sar_mean, b.sar_mean) and int(b.n_mean) == 5


@pytest.fixture(scope="module")
def gum(tmp_path_factory) -> Path:
    return simulate_sen12gum(tmp_path_factory.mktemp("gum") / "root", n=11, patch_size=32, test_aois=2, seed=4)


def test_squeeze_means_over_the_loader_any_batch_size(gum: Path):
    train = SEN12GUM(gum, "train")
    n = len(train)
    assert n >= 5
    torch.manual_seed(1)
    net = DualStreamUNetMMTM(topology=(4, 8)).eval()
    # ground truth: every sample alone, squeeze vectors at each MMTM input
    per = {m: ([], []) for m in net.mmtms}

    def hook(mod, args):
        per[mod][0].append(squeeze(args[0]))
        per[mod][1].append(squeeze(args[1]))

    hooks = [m.register_forward_pre_hook(hook) for m in net.mmtms]
    with torch.no_grad():
        for i in range(n):
            s = train[i]
            net({"s1": s["s1"][None], "s2": s["s2"][None]})
    for h in hooks:
        h.remove()
    for bs in (1, 2, n - 1, n, 8):
        assert compute_squeeze_means(net, train, batch_size=bs) == n
        for m in net.mmtms:
            torch.testing.assert_close(m.sar_mean, torch.cat(per[m][0]).mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(m.optical_mean, torch.cat(per[m][1]).mean(0), rtol=1e-5, atol=1e-6)


def test_utilization_on_the_test_aois(gum: Path):
    torch.manual_seed(2)
    net = DualStreamUNetMMTM(topology=(4, 8))
    assert isinstance(net, CutOffModel)
    compute_squeeze_means(net, SEN12GUM(gum, "train"), batch_size=4)
    test = SEN12GUM(gum, "test")
    scores = cut_off_scores(net, test)  # whole AOIs of 40×40 one at a time
    total = sum(v for k, v in scores["fusion"]["sar"].items() if k in ("tp", "fp", "fn", "tn"))
    assert total == sum(test[i]["mask"].numel() for i in range(len(test)))
    r = utilization_rates(net, test)
    assert set(r.as_dict()) >= {"u_sar_given_optical", "u_optical_given_sar", "d_util", "abs_d_util"}


def test_a_few_training_steps_lower_the_branch_losses():
    torch.manual_seed(0)
    x = torch.rand(4, 6, 32, 32)
    y = (x[:, :1] + x[:, 2:3] > 1).float()  # a target both modalities carry
    net = DualStreamUNetMMTM(topology=(8, 16))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.01)

    def loss() -> torch.Tensor:
        ls, lo = net.branch_logits(x)
        return power_jaccard_loss(ls, y) + power_jaccard_loss(lo, y)

    first = float(loss().detach())
    for _ in range(15):
        opt.zero_grad()
        out = loss()
        out.backward()
        opt.step()
    assert float(loss().detach()) < first
    # the mean-squeeze buffers receive no gradient and are untouched by the optimizer
    assert all(int(m.n_mean) == 0 and not m.sar_mean.requires_grad for m in net.mmtms)


def test_mmtm_bad_input():
    with pytest.raises(ValueError, match="channels must be"):
        MMTM(0)
    m = MMTM(4)
    with pytest.raises(ValueError, match="expected"):
        m(torch.rand(1, 3, 4, 4), torch.rand(1, 4, 4, 4))
    with pytest.raises(ValueError, match="expected shapes"):
        m.set_means(torch.zeros(3), torch.zeros(4))
