"""Tests for fusionbook.losses and fusionbook.metrics beyond the notebook examples."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)
from torchmetrics.functional.classification import binary_fbeta_score
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

from fusionbook.losses import (
    MaskedMAELoss,
    MaskedMSELoss,
    PowerJaccardLoss,
    bce_with_logits,
    masked_mae,
    masked_mse,
    power_jaccard_loss,
)
from fusionbook.metrics import (
    BinarySegmentationMetrics,
    MaskedRegressionMetrics,
    MultilabelFScores,
    UncertaintyMetrics,
    binary_entropy,
    confidence,
    counts_f1,
    counts_iou,
)

NAN = float("nan")


def _logit(p) -> torch.Tensor:
    return torch.logit(torch.as_tensor(p, dtype=torch.float64))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ----------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize(
    "p, y, expected",
    [
        ([0.8, 0.3], [1.0, 0.0], 0.139786),
        ([0.5] * 6, [1.0] * 6, 1 / 3),
        ([0.9, 0.2, 0.6, 0.1], [1.0, 0.0, 1.0, 0.0], 0.127907),
    ],
)
def test_power_jaccard_toy(p, y, expected):
    loss = power_jaccard_loss(_logit([p]), torch.tensor([y], dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    module = PowerJaccardLoss()(_logit([p]), torch.tensor([y], dtype=torch.float64))
    assert module.item() == pytest.approx(expected, abs=1e-6)


def test_power_jaccard_spec_logits_and_perfect():
    loss = power_jaccard_loss(torch.tensor([[1.386294, -0.847298]]), torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(0.139786, abs=1e-6)
    perfect = power_jaccard_loss(torch.tensor([[math.inf, -math.inf]], dtype=torch.float64), torch.tensor([[1.0, 0.0]]))
    assert perfect.item() == pytest.approx(1e-6, rel=1e-3)


def test_power_jaccard_reductions(gen):
    logits = torch.randn(3, 1, 5, 5, generator=gen, dtype=torch.float64)
    y = (torch.rand(3, 1, 5, 5, generator=gen) > 0.6).double()
    batch = power_jaccard_loss(logits, y)
    flat = power_jaccard_loss(logits.reshape(1, -1), y.reshape(1, -1))
    assert batch.shape == () and torch.isclose(batch, flat)
    per = power_jaccard_loss(logits, y, reduction="per_sample")
    loop = torch.stack([power_jaccard_loss(logits[i : i + 1], y[i : i + 1]) for i in range(3)])
    assert per.shape == (3,) and torch.allclose(per, loop)
    assert torch.isclose(power_jaccard_loss(logits, y, reduction="sum"), loop.sum())
    # the exponent matters: power 1 is the soft-IoU loss
    p = torch.sigmoid(logits)
    soft_iou = 1 - (p * y).sum() / ((p + y).sum() - (p * y).sum() + 1e-6)
    assert torch.isclose(power_jaccard_loss(logits, y, power=1), soft_iou)


def test_power_jaccard_mask_equals_dropping_pixels(gen):
    logits = torch.randn(2, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(2, 16, generator=gen) > 0.5).double()
    mask = torch.rand(2, 16, generator=gen) > 0.3
    masked = power_jaccard_loss(logits, y, mask=mask)
    dropped = power_jaccard_loss(logits[mask][None], y[mask][None])
    assert torch.isclose(masked, dropped)
    # NaN targets act like a False mask, gradients stay finite and vanish on dropped pixels
    y_nan = torch.where(mask, y, torch.full_like(y, NAN))
    loss = power_jaccard_loss(logits, y_nan)
    assert torch.isclose(loss, masked)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[~mask] == 0).all()


def test_power_jaccard_edge_cases():
    logits = torch.randn(2, 8, requires_grad=True)
    # a background-only sample: constant 1, zero gradient, in the per-sample form
    per = power_jaccard_loss(logits, torch.zeros(2, 8), reduction="per_sample")
    assert torch.equal(per, torch.ones(2))
    per.sum().backward()
    assert (logits.grad == 0).all()
    # nothing valid at all: 1 (the reference code's value on an empty subset)
    empty = power_jaccard_loss(logits, torch.ones(2, 8), mask=torch.zeros(2, 8, dtype=torch.bool))
    assert empty.item() == 1.0


def test_power_jaccard_gradcheck(gen):
    logits = torch.randn(2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(2, 6, generator=gen) > 0.5).double()
    assert torch.autograd.gradcheck(lambda x: power_jaccard_loss(x, y, reduction="per_sample"), (logits,))


def test_power_jaccard_half_precision_input():
    logits = torch.tensor([[1.386294, -0.847298]], dtype=torch.bfloat16)
    loss = power_jaccard_loss(logits, torch.tensor([[1.0, 0.0]]))
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(0.139786, abs=5e-3)


@pytest.mark.parametrize("fn, elem", [(masked_mse, lambda d: d**2), (masked_mae, lambda d: d.abs())])
def test_masked_regression_losses_match_indexing(fn, elem, gen):
    pred = torch.randn(4, 1, 6, 6, generator=gen, requires_grad=True)
    target = torch.rand(4, 1, 6, 6, generator=gen)
    target[torch.rand(4, 1, 6, 6, generator=gen) < 0.3] = NAN
    valid = ~torch.isnan(target)
    loss = fn(pred, target)
    ref = elem(pred[valid] - target[valid]).mean()
    assert torch.isclose(loss, ref)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[~valid] == 0).all()


@pytest.mark.parametrize("fn", [masked_mse, masked_mae, bce_with_logits])
def test_weighted_reduction(fn, gen):
    pred = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    target = torch.rand(3, 10, generator=gen, dtype=torch.float64)
    target[0, :4] = NAN
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    per_pixel = {
        masked_mse: lambda p, t: (p - t) ** 2,
        masked_mae: lambda p, t: (p - t).abs(),
        bce_with_logits: lambda p, t: F.binary_cross_entropy_with_logits(p, t, reduction="none"),
    }[fn](pred, torch.nan_to_num(target))
    valid = (~torch.isnan(target)).double()
    ref = (w[:, None] * valid * per_pixel).sum() / (w[:, None] * valid).sum()
    assert torch.isclose(fn(pred, target, w), ref)
    # uniform weights = unweighted; a sample without valid pixels contributes nothing, whatever its weight
    assert torch.isclose(fn(pred, target, torch.full((3,), 7.0, dtype=torch.float64)), fn(pred, target))
    target2 = torch.cat([target, torch.full((1, 10), NAN, dtype=torch.float64)])
    pred2 = torch.cat([pred, torch.randn(1, 10, generator=gen, dtype=torch.float64)])
    assert torch.isclose(fn(pred2, target2, torch.cat([w, torch.tensor([100.0], dtype=torch.float64)])), ref)


@pytest.mark.parametrize("fn", [masked_mse, masked_mae, bce_with_logits, MaskedMSELoss(), MaskedMAELoss()])
def test_all_invalid_batch_is_zero_with_grad(fn):
    pred = torch.randn(2, 1, 4, 4, requires_grad=True)
    loss = fn(pred, torch.full((2, 1, 4, 4), NAN))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))
    # zero weights behave the same
    assert fn(pred, torch.zeros(2, 1, 4, 4), torch.zeros(2)).item() == 0.0


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="same shape"):
        power_jaccard_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="weight"):
        masked_mse(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 1))
    with pytest.raises(ValueError, match="mask"):
        power_jaccard_loss(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(3, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- metrics
def test_counts_formulas():
    assert counts_f1(50, 10, 20) == pytest.approx(0.769180, abs=1e-6)
    assert counts_iou(50, 10, 20) == pytest.approx(0.624999, abs=1e-6)
    assert counts_f1(50, 10, 20, eps=0) == pytest.approx(10 / 13, abs=1e-12)
    assert counts_f1(0, 0, 0) == 0.0 and counts_iou(0, 0, 0) == 0.0


def _seg_batches(gen, n=4):
    out = []
    for _ in range(n):
        logits = torch.randn(2, 1, 8, 8, generator=gen)
        target = (torch.rand(2, 1, 8, 8, generator=gen) > 0.6).float()
        mask = torch.rand(2, 1, 8, 8, generator=gen) > 0.2
        out.append((logits, target, mask))
    return out


def test_binary_segmentation_matches_torchmetrics_and_accumulates(gen):
    batches = _seg_batches(gen)
    acc = BinarySegmentationMetrics()
    for lg, y, m in batches:
        acc.update(lg, y, m)
    res = acc.compute()
    lg = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    m = torch.cat([b[2] for b in batches])
    one = BinarySegmentationMetrics()
    one.update(lg, y, m)
    assert one.compute() == pytest.approx(res, abs=1e-12)
    p, t = torch.sigmoid(lg[m]), y[m].long()
    ref = {
        "iou": BinaryJaccardIndex()(p, t),
        "f1": BinaryF1Score()(p, t),
        "precision": BinaryPrecision()(p, t),
        "recall": BinaryRecall()(p, t),
        "accuracy": BinaryAccuracy()(p, t),
    }
    assert res == pytest.approx({k: v.item() for k, v in ref.items()}, abs=1e-6)
    # NaN targets are the same as a False mask
    nan_metric = BinarySegmentationMetrics()
    nan_metric.update(lg, torch.where(m, y, torch.full_like(y, NAN)))
    assert nan_metric.counts() == one.counts()
    # probabilities with from_logits=False give the same counts
    prob = BinarySegmentationMetrics(from_logits=False)
    prob.update(torch.sigmoid(lg), y, m)
    assert prob.counts() == one.counts()
    # integer and boolean targets are accepted as well
    for dtype in (torch.long, torch.bool):
        typed = BinarySegmentationMetrics()
        typed.update(lg, y.to(dtype), m)
        assert typed.counts() == one.counts()


def test_binary_segmentation_threshold_rule_and_logit_pitfall():
    # small logits inside [0, 1]: torchmetrics alone would treat them as probabilities
    logits = torch.tensor([[0.3, 0.6, 0.9]])
    target = torch.tensor([[1, 1, 1]])
    m = BinarySegmentationMetrics()
    m.update(logits, target)
    assert m.counts()["tp"] == 3  # sigmoid(0.3) > 0.5
    assert BinaryRecall()(logits, target).item() == pytest.approx(2 / 3)  # 0.3 <= 0.5 read as a probability
    # exactly at the threshold is negative (strict >)
    half = BinarySegmentationMetrics(from_logits=False)
    half.update(torch.tensor([[0.5, 0.5000001]]), torch.tensor([[1, 1]]))
    assert half.counts() == {"tp": 1, "fp": 0, "tn": 0, "fn": 1}
    with pytest.raises(ValueError, match="from_logits"):
        BinarySegmentationMetrics(from_logits=False).update(torch.tensor([[2.0]]), torch.tensor([[1]]))


def test_binary_segmentation_edge_cases():
    # no positives in target nor prediction
    m = BinarySegmentationMetrics()
    m.update(torch.full((1, 10), -3.0), torch.zeros(1, 10))
    assert m.compute() == {"iou": 0.0, "f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 1.0}
    m1 = BinarySegmentationMetrics(zero_division=1.0)
    m1.update(torch.full((1, 10), -3.0), torch.zeros(1, 10))
    assert m1.compute()["iou"] == 1.0 and m1.compute()["accuracy"] == 1.0
    me = BinarySegmentationMetrics(eps=1e-4)
    me.update(torch.full((1, 10), -3.0), torch.zeros(1, 10))
    assert me.compute()["f1"] == 0.0 and me.compute()["accuracy"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="share a shape"):
        m.update(torch.zeros(1, 10), torch.zeros(1, 1, 10))


def test_binary_segmentation_hafner_form():
    preds = torch.cat([torch.ones(60), torch.zeros(50)])[None]
    target = torch.cat([torch.ones(50), torch.zeros(10), torch.ones(20), torch.zeros(30)])[None]
    h = BinarySegmentationMetrics(from_logits=False, eps=1e-4)
    h.update(preds, target)
    res = h.compute()
    assert res["f1"] == pytest.approx(0.769180, abs=1e-6) and res["iou"] == pytest.approx(0.624999, abs=1e-6)
    h.reset()
    assert h.counts() == {"tp": 0, "fp": 0, "tn": 0, "fn": 0}


def _sklearn_like_fbeta(y_true: torch.Tensor, y_pred: torch.Tensor, beta: float) -> dict[str, float]:
    """Independent reference for scikit-learn's fbeta_score(average=micro/macro/samples, zero_division=0)."""
    b2 = beta * beta

    def f(tp, fp, fn):
        den = (1 + b2) * tp + b2 * fn + fp
        return (1 + b2) * tp / den if den > 0 else 0.0

    yt, yp = y_true.tolist(), y_pred.tolist()
    n, labels = len(yt), len(yt[0])
    cnt = lambda rows, cols: (  # noqa: E731
        sum(yt[i][j] and yp[i][j] for i in rows for j in cols),
        sum((not yt[i][j]) and yp[i][j] for i in rows for j in cols),
        sum(yt[i][j] and (not yp[i][j]) for i in rows for j in cols),
    )
    return {
        "micro": f(*cnt(range(n), range(labels))),
        "macro": sum(f(*cnt(range(n), [j])) for j in range(labels)) / labels,
        "samples": sum(f(*cnt([i], range(labels))) for i in range(n)) / n,
    }


def test_multilabel_toy():
    fs = MultilabelFScores(3)
    fs.update(torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([[1, 0, 1], [0, 1, 0]]))
    res = fs.compute()
    expected = dict(f1_micro=2 / 3, f2_micro=2 / 3, f1_macro=5 / 9, f2_macro=0.6111, f1_samples=0.75, f2_samples=0.75)
    assert res == pytest.approx(expected, abs=1e-4)
    assert set(res) == set(expected)
    # equal F1/F2 sample sums after the first batch must not merge their states
    fs.update(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1, 1, 1]]))
    assert fs.compute()["f2_samples"] == pytest.approx((0.5 + 1 + 5 / 13) / 3, abs=1e-9)
    assert fs.compute()["f1_samples"] == pytest.approx((0.5 + 1 + 0.5) / 3, abs=1e-9)


def test_multilabel_random_accumulation_and_reference(gen):
    probs = torch.rand(40, 5, generator=gen)
    probs[:, 4] = 0.0  # a label never predicted ...
    target = (torch.rand(40, 5, generator=gen) > 0.6).long()
    target[:, 4] = 0  # ... nor true: scores 0 in the macro average
    target[:3] = 0  # samples without any true label
    probs[:2] = 0.1  # and without any predicted one
    fs = MultilabelFScores(5)
    for chunk_p, chunk_t in zip(probs.split(7), target.split(7)):
        fs.update(chunk_p, chunk_t)
    acc = fs.compute()
    one = MultilabelFScores(5)
    one.update(probs, target)
    assert one.compute() == pytest.approx(acc, abs=1e-6)
    y_pred = (probs > 0.5).long()
    for name, beta in (("f1", 1.0), ("f2", 2.0)):
        ref = _sklearn_like_fbeta(target, y_pred, beta)
        for avg, v in ref.items():
            assert acc[f"{name}_{avg}"] == pytest.approx(v, abs=1e-6), (name, avg)
        # torchmetrics' binary samplewise F over labels agrees with the samples average
        tm = binary_fbeta_score(probs, target, beta, multidim_average="samplewise").mean()
        assert acc[f"{name}_samples"] == pytest.approx(tm.item(), abs=1e-6)


def test_multilabel_threshold_logits_forward_reset():
    y = torch.ones(1, 3, dtype=torch.long)
    fs = MultilabelFScores(3)
    fs.update(torch.full((1, 3), 0.5), y)  # np.round(0.5) == 0: all negatives
    assert fs.compute()["f1_micro"] == 0.0
    fs.reset()
    batch = fs(torch.tensor([[0.9, 0.9, 0.1]]), y)  # forward: batch value, and accumulation
    assert float(batch["f1_micro"]) == pytest.approx(0.8)
    fs(torch.tensor([[0.1, 0.1, 0.1]]), y)
    assert fs.compute()["f1_micro"] == pytest.approx(2 * 2 / (2 * 2 + 4))
    fl = MultilabelFScores(3, threshold=0.7, from_logits=True)
    fl.update(_logit([[0.71, 0.69, 0.9]]).float(), y)
    assert fl.compute()["f1_micro"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="from_logits"):
        MultilabelFScores(3).update(torch.tensor([[3.0, -1.0, 0.2]]), y)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        MultilabelFScores(3).update(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long))


def test_masked_regression_metrics(gen):
    preds = torch.rand(6, 1, 5, 5, generator=gen)
    target = torch.rand(6, 1, 5, 5, generator=gen)
    target[torch.rand(6, 1, 5, 5, generator=gen) < 0.25] = NAN
    mask = torch.rand(6, 1, 5, 5, generator=gen) > 0.1
    m = MaskedRegressionMetrics()
    for i in range(0, 6, 2):
        m.update(preds[i : i + 2], target[i : i + 2], mask[i : i + 2])
    res = m.compute()
    valid = ~torch.isnan(target) & mask
    mae = MeanAbsoluteError()(preds[valid], target[valid]).item()
    rmse = MeanSquaredError(squared=False)(preds[valid], target[valid]).item()
    assert res == pytest.approx({"mae": mae, "rmse": rmse}, abs=1e-6)
    m.reset()
    m.update(preds, torch.full_like(target, NAN))
    assert all(math.isnan(v) for v in m.compute().values())


def test_entropy_confidence_and_uncertainty_metrics(gen):
    h = binary_entropy(torch.tensor([0.5, 0.9, 0.99, 0.01, 0.0, 1.0]))
    assert torch.allclose(h, torch.tensor([1.0, 0.468996, 0.080793, 0.080793, 0.0, 0.0]), atol=1e-6)
    assert torch.isfinite(h).all()
    assert binary_entropy(torch.tensor([0.3])).item() == pytest.approx(
        -(0.3 * math.log2(0.3) + 0.7 * math.log2(0.7)), abs=1e-6
    )
    assert torch.allclose(confidence(torch.tensor([0.0, 0.3, 0.5, 1.0])), torch.tensor([1.0, 0.7, 0.5, 1.0]))
    p = torch.rand(30, 12, generator=gen)
    um = UncertaintyMetrics()
    for chunk in p.split(8):
        um.update(chunk)
    res = um.compute()
    assert res["entropy"] == pytest.approx(binary_entropy(p).mean().item(), abs=1e-6)
    assert res["confidence"] == pytest.approx(confidence(p).mean().item(), abs=1e-6)
    ul = UncertaintyMetrics(from_logits=True)
    ul.update(torch.logit(p))
    assert ul.compute() == pytest.approx(res, abs=1e-5)
    um.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert all(math.isnan(v) for v in um.compute().values())


# ------------------------------------------------------------------------------------ distributed sync
def _ddp_worker(rank: int, world: int, init_file: str, queue) -> None:
    torch.set_num_threads(1)  # forked child: stay out of the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(rank)
        seg, reg, fs = BinarySegmentationMetrics(), MaskedRegressionMetrics(), MultilabelFScores(4)
        seg.update(torch.randn(1, 16, generator=g), (torch.rand(1, 16, generator=g) > 0.5).float())
        reg.update(torch.rand(1, 16, generator=g), torch.rand(1, 16, generator=g))
        fs.update(torch.rand(5, 4, generator=g), (torch.rand(5, 4, generator=g) > 0.5).long())
        result = (seg.counts(), seg.compute(), reg.compute(), fs.compute())
        if rank == 0:
            queue.put(result)
    finally:
        dist.destroy_process_group()


def test_distributed_sync_equals_single_process(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    # fork: the workers inherit the imported modules, which keeps this test to a few seconds
    queue = mp.get_context("fork").SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), queue), nprocs=2, join=True, start_method="fork")
    counts, seg_res, reg_res, fs_res = queue.get()
    seg, reg, fs = BinarySegmentationMetrics(), MaskedRegressionMetrics(), MultilabelFScores(4)
    for rank in range(2):
        g = torch.Generator().manual_seed(rank)
        seg.update(torch.randn(1, 16, generator=g), (torch.rand(1, 16, generator=g) > 0.5).float())
        reg.update(torch.rand(1, 16, generator=g), torch.rand(1, 16, generator=g))
        fs.update(torch.rand(5, 4, generator=g), (torch.rand(5, 4, generator=g) > 0.5).long())
    assert counts == seg.counts() and sum(counts.values()) == 32
    assert seg_res == pytest.approx(seg.compute(), abs=1e-12)
    assert reg_res == pytest.approx(reg.compute(), abs=1e-12)
    assert fs_res == pytest.approx(fs.compute(), abs=1e-6)
