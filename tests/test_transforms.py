"""Sample transforms: joint geometry, image-only radiometry, probabilities, seeding, workers, the papers' pipelines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from fusionbook.modality import MAPINWILD, SEN12GUM_MODALITIES, stack
from fusionbook.transforms import (
    SHARPNESS_KERNEL,
    Compose,
    Normalize,
    RandomErasing,
    RandomFlip,
    RandomGaussianBlur,
    RandomRot90,
    RandomSharpness,
    SelectBands,
    derive_seed,
    gaussian_blur,
    generators,
    image_keys,
    paper2_augmentations,
    paper45_augmentations,
    seed_worker,
    sharpen,
    spatial_keys,
)

RADIOMETRIC = (RandomSharpness, RandomGaussianBlur, RandomErasing)


# ---------------------------------------------------------------------------------------------- samples
def coords(c: int, h: int, w: int, offset: float = 0.0) -> torch.Tensor:
    "``(c, h, w)`` with value ``1000·row + col + 1e6·channel + offset``: every pixel knows where it came from."
    r = torch.arange(h, dtype=torch.float64).view(1, h, 1) * 1000
    q = torch.arange(w, dtype=torch.float64).view(1, 1, w)
    return r + q + 1e6 * torch.arange(c, dtype=torch.float64).view(c, 1, 1) + offset

def Stack(order):
    "The stacking step of these tests: ``sample['image'] = stack(sample, order)`` (per-modality tensors kept)."
    def add_image(sample):
        return {**sample, "image": stack(sample, tuple(order))}
    return add_image



def mapinwild_like(h: int = 8, w: int = 8) -> dict:
    "A MapInWild-style sample: four modalities, a NaN-holed target, a mask, a label and metadata."
    target = coords(1, h, w, 0.5)
    target[0, 1, 2] = target[0, h - 1, 0] = float("nan")
    return {
        "s2": coords(10, h, w, 0.1), "s1": coords(2, h, w, 0.2), "worldcover": coords(1, h, w, 0.3),
        "viirs": coords(1, h, w, 0.4), "target": target, "mask": coords(1, h, w, 0.6),
        "label": torch.tensor([1.0, 0.0, 1.0]), "id": 11, "crop": (3, 4),
    }


def positions(x: torch.Tensor) -> torch.Tensor:
    "The original ``(row, col)`` encoded in channel 0 of a coords tensor, ``(H, W, 2)``."
    v = x[0].nan_to_num(-1.0).floor().long() % 1_000_000
    return torch.stack([v // 1000, v % 1000], -1)


def check_same_motion(before: dict, after: dict, keys) -> None:
    "Every key moved its pixels exactly as s1 did (NaN included) and no values changed."
    ref = positions(after["s1"])
    for k in keys:
        a, b = before[k], after[k]
        assert b.shape[:-2] == a.shape[:-2] and b.shape[-2:] == ref.shape[:2], k
        expected = a[:, ref[..., 0], ref[..., 1]]
        assert torch.equal(b.nan_to_num(-7.0), expected.nan_to_num(-7.0)), k


# ---------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("make", [lambda s: RandomFlip(0.5, 0.5, seed=s), lambda s: RandomRot90(seed=s),
                                  lambda s: paper45_augmentations(seed=s)])
def test_geometry_same_draw_on_all_spatial_tensors(make, seed):
    s = mapinwild_like()
    o = make(seed)(s)
    check_same_motion(s, o, ("s2", "s1", "worldcover", "viirs", "target", "mask"))
    assert o["label"] is s["label"] and o["id"] == 11 and o["crop"] == (3, 4)
    # NaN no-data pixels stay NaN and sit where their pixel went
    assert torch.isnan(o["target"]).sum() == 2
    nan_from = {tuple(p) for p in positions(s["mask"])[torch.isnan(s["target"][0])].tolist()}
    assert {tuple(p) for p in positions(o["mask"])[torch.isnan(o["target"][0])].tolist()} == nan_from


def test_geometry_on_stacked_image():
    s = Stack(MAPINWILD.default_order)(mapinwild_like())
    aug = paper45_augmentations(seed=3)
    for _ in range(10):
        o = aug(s)
        assert torch.equal(o["image"], torch.cat([o[m] for m in MAPINWILD.default_order]))
        check_same_motion(s, o, ("image", "target"))


def test_flip_and_rot90_directions():
    s = mapinwild_like(4, 6)
    assert positions(RandomFlip(1.0, 0.0)(s)["s1"])[0, 0].tolist() == [0, 5]  # left-right
    assert positions(RandomFlip(0.0, 1.0)(s)["s1"])[0, 0].tolist() == [3, 0]  # up-down
    sq = mapinwild_like(5, 5)
    o = RandomRot90(ks=(1,))(sq)
    assert torch.equal(o["s2"], torch.rot90(sq["s2"], 1, (-2, -1)))
    assert positions(o["s1"])[0, 0].tolist() == [0, 4]  # counter-clockwise: top-right corner → top-left


def test_explicit_geometric_keys():
    s = mapinwild_like()
    o = RandomFlip(1.0, 1.0, keys=("s2", "target"))(s)
    assert o["s1"] is s["s1"] and torch.equal(o["s2"], s["s2"].flip(-1, -2))
    with pytest.raises(KeyError, match="s3"):
        RandomFlip(1.0, 1.0, keys=("s3",))(s)
    with pytest.raises(ValueError, match="H, W"):
        RandomFlip(1.0, 1.0, keys=("label",))(s)


def test_rot90_draws_all_four_k_uniformly():
    s = {"s1": coords(1, 3, 3), "target": coords(1, 3, 3)}
    corner = {(0, 0): 0, (0, 2): 1, (2, 2): 2, (2, 0): 3}
    rot = RandomRot90(seed=0)
    n = 4000
    counts = Counter(corner[tuple(positions(rot(s)["s1"])[0, 0].tolist())] for _ in range(n))
    assert set(counts) == {0, 1, 2, 3}
    chi2 = sum((counts[k] - n / 4) ** 2 / (n / 4) for k in range(4))
    assert chi2 < 16.3, counts  # χ²(3) 99.9 % quantile
    # the authors' k ∈ {1, 2, 3} variant never leaves the sample unrotated
    authors = RandomRot90(ks=(1, 2, 3), seed=0)
    assert all(corner[tuple(positions(authors(s)["s1"])[0, 0].tolist())] != 0 for _ in range(200))


def test_rot90_non_square():
    s = mapinwild_like(4, 7)
    with pytest.raises(ValueError, match="non_square='even'"):
        RandomRot90(seed=0)(s)
    assert RandomRot90(ks=(0, 2), seed=0)(s)["s1"].shape == (2, 4, 7)  # even ks only: fine as is
    even = paper45_augmentations(seed=0, non_square="even")
    for _ in range(30):
        o = even(s)
        assert all(o[k].shape == s[k].shape for k in spatial_keys(s))
        check_same_motion(s, o, ("s2", "target", "mask"))
    seen = set()
    swap = RandomRot90(non_square="swap", seed=1)
    for _ in range(30):
        o = swap(s)
        hw = {o[k].shape[-2:] for k in spatial_keys(s)}
        assert len(hw) == 1
        seen |= hw
        check_same_motion(s, o, ("s2", "target", "mask"))
    assert seen == {(4, 7), (7, 4)}
    with pytest.raises(ValueError, match="no rotation"):
        RandomRot90(ks=(1,), non_square="even")(s)


# ---------------------------------------------------------------------------------------------- radiometry
def random_sample(h: int = 24, w: int = 24, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    s = mapinwild_like(h, w)
    s.update(s2=torch.rand(10, h, w, generator=g), s1=torch.randn(2, h, w, generator=g),
             worldcover=torch.rand(1, h, w, generator=g), viirs=torch.randn(1, h, w, generator=g))
    return s


def test_default_keys():
    s = Stack(("s2", "s1"))(mapinwild_like())
    assert image_keys(s) == ["s2", "s1", "worldcover", "viirs", "image"]
    assert spatial_keys(s) == ["s2", "s1", "worldcover", "viirs", "target", "mask", "image"]


@pytest.mark.parametrize("T", RADIOMETRIC)
def test_radiometric_p0_identity_p1_always(T):
    s = random_sample()
    t0 = T(p=0.0, seed=0)
    for _ in range(20):
        o = t0(s)
        assert o is not s and all(o[k] is s[k] for k in s)
    t1 = T(p=1.0, seed=0)
    for _ in range(20):
        o = t1(s)
        for k in ("s2", "s1", "worldcover", "viirs"):
            assert not torch.equal(o[k], s[k]), k
        for k in ("target", "mask", "label", "id", "crop"):
            assert o[k] is s[k], k


@pytest.mark.parametrize("T", [RandomFlip, RandomRot90])
def test_geometric_p0_identity(T):
    s = mapinwild_like()
    t = RandomFlip(0.0, 0.0, seed=0) if T is RandomFlip else RandomRot90(p=0.0, seed=0)
    assert all(all(o[k] is s[k] for k in s) for o in (t(s) for _ in range(10)))
    t = RandomFlip(1.0, 1.0) if T is RandomFlip else RandomRot90(ks=(2,), p=1.0)
    assert all(torch.equal(t(s)["s1"], s["s1"].flip(-1, -2)) for _ in range(10))


def test_probability_frequency():
    s = random_sample(8, 8)
    t = RandomGaussianBlur(p=0.3, seed=5)
    n = 2000
    hits = sum(not torch.equal(t(s)["s1"], s["s1"]) for _ in range(n))
    assert abs(hits / n - 0.3) < 0.04


def test_erasing_touches_images_only_with_one_rectangle():
    s = random_sample()
    er = RandomErasing(p=1.0, value=-99.0, seed=2)
    areas = []
    for _ in range(200):
        o = er(s)
        holes = [o[k] == -99.0 for k in ("s2", "s1", "worldcover", "viirs")]
        rect = holes[0][0]
        rows, cols = rect.any(1).nonzero().flatten(), rect.any(0).nonzero().flatten()
        # a full rectangle, identical in every channel of every modality
        assert rect.sum() == len(rows) * len(cols) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert all(torch.equal(h, rect.expand_as(h)) for h in holes)
        assert torch.equal(o["s1"][~holes[1]], s["s1"][~holes[1]])
        assert o["target"] is s["target"] and o["mask"] is s["mask"]
        areas.append(rect.float().mean().item())
    assert 0.005 < min(areas) and max(areas) < 0.45 and 0.1 < np.mean(areas) < 0.25  # scale U(0.02, 0.33)


def test_sharpness_matches_definition():
    x = torch.randn(3, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    smooth = x.clone()
    for c in range(3):
        smooth[c, 1:-1, 1:-1] = torch.from_numpy(
            ndimage.correlate(x[c].numpy(), SHARPNESS_KERNEL.double().numpy(), mode="constant")[1:-1, 1:-1])
    for f in (0.0, 0.25, 1.0, 1.7):
        assert torch.allclose(sharpen(x, f), smooth + f * (x - smooth), atol=1e-6)
    # the random transform draws f in [0, 0.5]: the result lies between smoothed copy and input
    s = {"s1": x}
    o = RandomSharpness(0.5, p=1.0, seed=0)(s)["s1"]
    f = ((o - smooth) / (x - smooth))[:, 1:-1, 1:-1].median().item()
    assert 0.0 <= f <= 0.5 and torch.allclose(o, smooth + f * (x - smooth), atol=1e-6)
    # kornia's [0, 1] clip, opt-in
    inner = sharpen(x, 0.0, clamp=(0.0, 1.0))[:, 1:-1, 1:-1]
    assert inner.min() == 0.0 and inner.max() == 1.0
    assert sharpen(x, 1.5, clamp=(0.0, 1.0)).min() == 0.0


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_gaussian_blur_matches_scipy(sigma):
    x = torch.randn(2, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = gaussian_blur(x, 3, sigma)
    ref = ndimage.gaussian_filter(x.numpy(), (0, sigma, sigma), radius=(0, 1, 1), mode="mirror")
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)
    if sigma == 0.1:
        assert torch.allclose(ours, x, atol=1e-6)


def test_radiometric_errors():
    s = random_sample()
    s["int"] = torch.zeros(1, 24, 20, dtype=torch.int64)
    with pytest.raises(TypeError, match="'int'"):
        RandomSharpness(p=1.0)(s)
    with pytest.raises(ValueError, match="same \\(H, W\\)"):
        RandomErasing(p=1.0)({"s1": torch.zeros(2, 8, 8), "s2": torch.zeros(2, 4, 4)})
    with pytest.raises(ValueError, match="sigma"):
        RandomGaussianBlur(sigma=(0.0, 1.0))
    with pytest.raises(ValueError, match="`p`"):
        RandomSharpness(p=1.5)
    with pytest.raises(ValueError, match="either"):
        RandomFlip(generator=torch.Generator(), seed=1)


# ---------------------------------------------------------------------------------------------- purity & seeding
def test_input_sample_is_not_modified():
    s = Stack(("s2", "s1"))(random_sample())
    copy = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
    keys = list(s)
    aug = Compose([paper2_augmentations(seed=0), paper45_augmentations(seed=1), RandomErasing(p=1.0, seed=2)])
    for _ in range(10):
        aug(s)
    assert list(s) == keys
    for k, v in copy.items():
        assert torch.equal(s[k].nan_to_num(-1), v.nan_to_num(-1)) if isinstance(v, torch.Tensor) else s[k] == v


def _run(aug, s, n=15):
    return [aug(s) for _ in range(n)]


def _same(a, b) -> bool:
    return all(torch.equal(x[k].nan_to_num(-1), y[k].nan_to_num(-1)) for x, y in zip(a, b) for k in spatial_keys(x))


def test_reproducible_with_seed_and_generator():
    s = random_sample()
    a = _run(paper2_augmentations(seed=31), s)
    assert _same(a, _run(paper2_augmentations(seed=31), s))
    assert _same(a, _run(paper2_augmentations(generator=torch.Generator().manual_seed(31)), s))
    assert not _same(a, _run(paper2_augmentations(seed=32), s))
    assert not all(torch.equal(a[0]["s2"], o["s2"]) for o in a[1:])  # the stream advances
    # no seed: the global torch RNG
    torch.manual_seed(4)
    b = _run(paper45_augmentations(), s)
    torch.manual_seed(4)
    assert _same(b, _run(paper45_augmentations(), s))


def test_compose_and_helpers():
    s = {"s2": coords(10, 4, 4), "s1": coords(2, 4, 4), "label": torch.ones(3)}
    pipe = Compose([SelectBands.from_bands(SEN12GUM_MODALITIES["s2"], ("B2", "B3", "B4", "B8")),
                    Normalize([1.0, 2.0], [2.0, 4.0], key="s1"), Stack(("s1", "s2"))])
    o = pipe(s)
    assert o["image"].shape == (6, 4, 4) and len(pipe) == 3 and "SelectBands" in repr(pipe)
    assert torch.equal(o["s2"][3], s["s2"][6])
    assert torch.allclose(o["image"][1], (s["s1"][1] - 2) / 4)
    with pytest.raises(TypeError, match="callable"):
        Compose([1])
    with pytest.raises(TypeError, match="expected a sample dict"):
        Compose([lambda d: None])(s)
    with pytest.raises(KeyError, match="B9"):
        SelectBands.from_bands(SEN12GUM_MODALITIES["s2"], ("B9",))
    with pytest.raises(ValueError, match="std"):
        Normalize([0.0], [0.0])


# ---------------------------------------------------------------------------------------------- DataLoader workers
class Repeat(Dataset):
    "The same sample ``n`` times, augmented by ``transforms``."

    def __init__(self, sample: dict, n: int, transforms):
        self.sample, self.n, self.transforms = sample, n, transforms

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.transforms(self.sample)

    def generators(self) -> list:
        "Structural generator discovery: the dataset exposes its transforms' generators."
        return generators(self.transforms)


def _epoch(ds, workers: int, seed: int, worker_init_fn=None) -> torch.Tensor:
    loader = DataLoader(ds, batch_size=2, num_workers=workers, worker_init_fn=worker_init_fn,
                        generator=torch.Generator().manual_seed(seed), collate_fn=lambda b: b)
    return torch.stack([x["s2"] for batch in loader for x in batch])


def test_workers_draw_different_streams_and_reproduce():
    s = {"s2": torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0)), "mask": torch.zeros(1, 16, 16)}
    ds = Repeat(s, 8, paper2_augmentations(seed=7))
    a = _epoch(ds, 2, seed=0)
    # batches 0, 2 go to worker 0 and batches 1, 3 to worker 1: without re-seeding they would be equal
    assert not torch.equal(a[0:2], a[2:4]) and not torch.equal(a[4:6], a[6:8])
    assert torch.equal(a, _epoch(ds, 2, seed=0))  # same loader seed: same augmentations
    assert torch.equal(a, _epoch(ds, 2, seed=0, worker_init_fn=seed_worker))  # eager = lazy re-seeding
    assert not torch.equal(a, _epoch(ds, 2, seed=1))  # another loader seed (or epoch): other draws
    # the main process's generator is not touched by the workers
    g = generators(ds)[0]
    assert len(generators(ds)) == 1 and g.initial_seed() == 7
    main = _epoch(ds, 0, seed=0)
    assert torch.equal(main, _epoch(Repeat(s, 8, paper2_augmentations(seed=7)), 0, seed=0))


def test_derive_seed():
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(2, 1)
    assert 0 <= derive_seed(2**63, 5) < 2**63


# ---------------------------------------------------------------------------------------------- with a loader
def test_paper2_on_simulated_mapinwild(tmp_path: Path):
    from fusionbook.data.mapinwild import MapInWild, simulate_mapinwild

    root = simulate_mapinwild(tmp_path / "miw", n=3, tile_size=48, splits=(1.0, 0.0, 0.0), workers=1)
    plain = MapInWild(root, "train", target="naturalness", crop_size=32, nan_policy="keep")
    aug = MapInWild(root, "train", target="naturalness", crop_size=32, nan_policy="keep",
                    transforms=Compose([Stack(MAPINWILD.default_order), paper2_augmentations(seed=31)]))
    for i in range(len(plain)):
        p, a = plain[i], aug[i]
        assert a["image"].shape == (14, 32, 32) and a["target"].shape == p["target"].shape and a["id"] == p["id"]
        # the target only moves: its values (and its NaN count) are those of a flip of the plain target
        flips = [p["target"].flip(d) if d else p["target"] for d in ((), (-1,), (-2,), (-1, -2))]
        assert any(torch.equal(a["target"].nan_to_num(-5), f.nan_to_num(-5)) for f in flips)
