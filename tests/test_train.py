"""Training engine: checkpoints, bit-identical resume (interrupt and kill, with the chapters' augmentations), refused
resumes (corrupt checkpoint, other data, folder in use), determinism, progress output, DDP with two processes."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fusionbook
from fusionbook.data.io import DatasetError
from fusionbook.results import FolderInUseError
from fusionbook.train import (
    Batching,
    CheckpointError,
    Checkpointing,
    DictDataset,
    EarlyStopping,
    Optimization,
    Schedule,
    Task,
    data_fingerprint,
    evaluate,
    fit,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)

ROOT = Path(fusionbook.__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")

# Shared by the in-process runs and by the scripts run in subprocesses (killed run, torchrun).
COMMON = textwrap.dedent('''
    import torch
    from torch import nn
    from torchmetrics.classification import BinaryF1Score
    from fusionbook.train import DictDataset, Task, fit, seed_everything, with_target
    from fusionbook import transforms as T


    class FlipDataset(DictDataset):
        """Random horizontal flips drawn from torch's global generator (exercises RNG checkpointing)."""

        def __getitem__(self, i):
            item = super().__getitem__(i)
            if torch.rand(()) < 0.5:
                item = {k: v.flip(-1) for k, v in item.items()}
            return item


    class AugDataset(DictDataset):
        """A chapter's own seeded augmentation chain (its generator is owned by the transform)."""

        def __init__(self, transforms, **tensors):
            super().__init__(**tensors)
            self.transforms = transforms

        def __getitem__(self, i):
            return self.transforms(super().__getitem__(i))

        def generators(self):
            return [self.transforms]


    AUGS = {"paper2": T.paper2_augmentations, "paper45": T.paper45_augmentations}


    def data(n, seed, flip=False, aug=None):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 3, 8, 8, generator=g)
        mask = (x[:, :1] + 0.5 * x[:, 1:2] > 0).float()
        if aug is not None:
            return AugDataset(AUGS[aug](seed=11), image=x, mask=mask)
        cls = FlipDataset if flip else DictDataset
        return cls(image=x, mask=mask)


    def make_model(dropout=0.2):
        seed_everything(0)
        layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout2d(dropout))
        return nn.Sequential(*layers, nn.Conv2d(4, 1, 1))


    def task():
        return Task(loss=with_target(nn.functional.binary_cross_entropy_with_logits),
                    metrics=lambda: {"f1": BinaryF1Score()},
                    update=lambda m, out, b: m.update(out.sigmoid(), b["mask"].long()))


    def run(ckpt=None, *, epochs=5, dropout=0.2, flip=True, n_train=48, aug=None, **kw):
        model = make_model(dropout)
        kw = {"batch_size": 8, "lr": 0.02, "progress": False, "monitor": "val_f1", "mode": "max", **kw}
        res = fit(model, task(), data(n_train, 1, flip, aug), data(24, 2), epochs=epochs, checkpoint_dir=ckpt, **kw)
        return model, res
''')

RECIPES = {
    "cyclic+weighted": dict(scheduler="cyclic", scheduler_kwargs={"base_lr": 1e-3, "max_lr": 0.05, "step_size_up": 5},
                            sample_weights=np.linspace(0.2, 1.0, 48)),
    "cosine+shuffle": dict(optimizer="adamw", weight_decay=0.01, scheduler="cosine_warm_restarts",
                           scheduler_kwargs={"T_0": 2}, grad_clip=1.0),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is fastest and matches the subprocesses (OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def common(tmp_path_factory):
    path = tmp_path_factory.mktemp("common") / "common.py"
    path.write_text(COMMON)
    return runpy.run_path(str(path)) | {"__path__": path}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _same(h1: pd.DataFrame, h2: pd.DataFrame) -> bool:
    return h1.drop(columns="time_s").equals(h2.drop(columns="time_s"))


def _same_weights(m1: torch.nn.Module, m2: torch.nn.Module) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_same_seed_bit_identical_and_best_restored(common, tmp_path):
    m1, r1 = common["run"](tmp_path / "a", epochs=4)
    m2, r2 = common["run"](None, epochs=4)
    assert _same(r1.history, r2.history) and _same_weights(m1, m2)
    h = r1.history
    assert list(h["epoch"]) == [1, 2, 3, 4] and {"train_loss", "val_loss", "val_f1", "lr", "time_s"} <= set(h)
    assert r1.best_epoch == int(h.loc[h["val_f1"].idxmax(), "epoch"]) and r1.best_metric == h["val_f1"].max()
    # the model holds the best epoch's weights, which are also in best.pt
    best = load_checkpoint(r1.checkpoint)
    assert best["epoch"] == r1.best_epoch and best["monitor"] == "val_f1"
    assert all(torch.equal(v, best["model"][k]) for k, v in m1.state_dict().items())
    again = evaluate(m1, common["task"](), common["data"](24, 2), batch_size=5, device="cpu")
    assert again["f1"] == r1.best_metric
    # restore_best=False keeps the last epoch's weights (those of last.pt)
    m3, r3 = common["run"](None, epochs=4, restore_best=False)
    last = load_checkpoint(r1.last_checkpoint)["model"]
    assert all(torch.equal(v, last[k]) for k, v in m3.state_dict().items())


def _files(folder: Path) -> list[str]:
    "Names in ``folder`` except the run lock's."
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".fusionbook-run"))


def test_checkpoint_contents_weights_only(common, tmp_path):
    _, res = common["run"](tmp_path, epochs=2, **RECIPES["cyclic+weighted"])
    assert _files(tmp_path) == ["best.pt", "last.pt"], _files(tmp_path)  # no temporary files left behind
    ck = torch.load(tmp_path / "last.pt", weights_only=True)  # plain torch files (the checksum line is ignored)
    for key in ("model", "optimizer", "scheduler", "scaler", "sampler_generator", "rng", "epoch", "best_metric",
                "best_epoch", "bad_epochs", "history", "config", "data_fingerprint", "data_rng"):
        assert key in ck, key
    assert ck["data_fingerprint"] == data_fingerprint(common["data"](48, 1, True))
    assert ck["epoch"] == 2 and len(ck["history"]) == 2 and ck["scheduler"]["last_epoch"] == 12  # 6 batches/epoch
    assert set(ck["rng"]) >= {"python", "numpy", "torch"}
    assert res.wall_time_s > 0 and res.resumed_from_epoch == 0


def test_failed_checkpoint_write_keeps_old_file(tmp_path):
    target = save_checkpoint({"epoch": 1, "w": torch.ones(3)}, tmp_path / "last.pt")
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an unpicklable object
        save_checkpoint({"epoch": 2, "bad": lambda: None}, target)
    assert load_checkpoint(target)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_resume_after_interrupt_is_bit_identical(common, tmp_path, recipe):
    kw = RECIPES[recipe]
    ref_model, ref = common["run"](None, epochs=5, **kw)

    def interrupt(state):
        if state.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        common["run"](tmp_path, epochs=5, callbacks=[interrupt], **kw)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2  # epoch 3 was lost with the interrupt
    model, res = common["run"](tmp_path, epochs=5, **kw)
    assert res.resumed_from_epoch == 2
    assert _same(res.history, ref.history), (res.history, ref.history)
    assert _same_weights(model, ref_model) and res.best_epoch == ref.best_epoch
    # a finished run resumes to its result without training
    model2, res2 = common["run"](tmp_path, epochs=5, **kw)
    assert res2.resumed_from_epoch == 5 and _same(res2.history, ref.history) and _same_weights(model2, ref_model)


@pytest.mark.parametrize("aug", [None, "paper2", "paper45"])
def test_resume_after_kill_is_bit_identical(common, tmp_path, aug):
    """SIGKILL during training, resume: the same numbers as an uninterrupted run, also with the exact augmentation
    chains of paper 2 (`paper2_augmentations`) and papers 4/5 (`paper45_augmentations`)."""
    script = tmp_path / "train_killed.py"
    script.write_text(textwrap.dedent(f'''
        import sys, time
        sys.path.insert(0, {str(common["__path__"].parent)!r})
        from common import run
        run({str(tmp_path / "ckpt")!r}, epochs=8, aug={aug!r}, callbacks=[lambda state: time.sleep(0.4)])
    '''))
    proc = subprocess.Popen([sys.executable, str(script)], env=_env(), stderr=subprocess.PIPE)
    last, epoch, deadline = tmp_path / "ckpt" / "last.pt", 0, time.time() + 120
    try:
        while epoch < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the training subprocess wrote no checkpoint in time"
            if last.exists():
                epoch = load_checkpoint(last)["epoch"]
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    epoch = load_checkpoint(last)["epoch"]  # the file survived the kill intact
    assert 2 <= epoch < 8
    if aug is not None:
        assert len(load_checkpoint(last)["data_rng"]["torch"]) == 1  # the chain's generator is checkpointed
    model, res = common["run"](tmp_path / "ckpt", epochs=8, aug=aug)
    ref_model, ref = common["run"](None, epochs=8, aug=aug)
    assert res.resumed_from_epoch == epoch
    assert _same(res.history, ref.history) and _same_weights(model, ref_model)


def test_extend_epochs_and_config_mismatch(common, tmp_path):
    common["run"](tmp_path, epochs=2)
    model, res = common["run"](tmp_path, epochs=3)  # train one epoch more
    ref_model, ref = common["run"](None, epochs=3)
    assert res.resumed_from_epoch == 2 and _same(res.history, ref.history) and _same_weights(model, ref_model)
    with pytest.raises(ValueError, match="lr"):
        common["run"](tmp_path, epochs=4, lr=0.1)
    _, fresh = common["run"](tmp_path, epochs=1, lr=0.1, resume=False)
    assert fresh.resumed_from_epoch == 0 and len(fresh.history) == 1


def test_early_stopping_and_step_limit(common):
    calls = []
    base = common["task"]()
    task = Task(loss=base.loss, forward=lambda m, b: calls.append(1) or m(b["image"]))
    model = common["make_model"](0)
    res = fit(model, task, common["data"](48, 1), common["data"](24, 2), epochs=10, batch_size=8, lr=1e-12,
              patience=2, max_steps_per_epoch=2, progress=False)
    # nothing improves after epoch 1: stop after 2 more epochs; each epoch 2 training + 3 validation batches
    assert res.stopped_early and list(res.history["epoch"]) == [1, 2, 3] and res.best_epoch == 1
    assert len(calls) == 3 * (2 + 3)


def test_weighted_loss_components_are_logged(common):
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    task = Task(loss=lambda out, b: {"fuse": bce(out, b["mask"]), "aux": (out**2).mean()}, loss_weights={"fuse": 2.0})
    res = fit(common["make_model"](0), task, common["data"](16, 1), common["data"](8, 2), epochs=1, batch_size=8,
              progress=False)
    row = res.history.iloc[0]
    assert {"train_fuse", "train_aux", "val_fuse", "val_aux"} <= set(res.history)
    assert row["val_loss"] == pytest.approx(2 * row["val_fuse"] + row["val_aux"], rel=1e-6)
    assert res.monitor == "val_loss"


def test_progress_output(common, capsys):
    common["run"](None, epochs=1, progress=False)
    assert capsys.readouterr().err == ""
    common["run"](None, epochs=1, progress=True)
    err = capsys.readouterr().err
    assert "fit" in err and "val_f1" in err


def test_clear_errors(common):
    run = common["run"]
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        run(None, epochs=1, optimizer="sgd")
    with pytest.raises(ValueError, match="val_iou.*val_f1"):
        run(None, epochs=1, monitor="val_iou")
    with pytest.raises(ValueError, match="sample_weights has 3 entries"):
        run(None, epochs=1, sample_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="T_0"):
        run(None, epochs=1, scheduler="cosine_warm_restarts")
    with pytest.raises(KeyError, match="image"):
        fit(common["make_model"](0), common["task"](), DictDataset(x=torch.zeros(4, 3, 8, 8)), epochs=1,
            batch_size=2, progress=False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        run(None, epochs=1, amp="fp16", device="cpu")
    with pytest.raises(ValueError, match="fit needs a task with a loss"):
        fit(common["make_model"](0), Task(), common["data"](4, 1), epochs=1, batch_size=2)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint("nothing.pt")


def test_bf16_autocast_on_cpu(common):
    _, res = common["run"](None, epochs=1, amp="bf16")
    assert res.history[["train_loss", "val_loss", "val_f1"]].notna().all(axis=None)


def test_seed_everything_rejects_bad_seed():
    with pytest.raises(TypeError, match="seed"):
        seed_everything("0")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to the interpreter")
def test_ddp_two_processes_match_one(common, tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(f'''
        import json, os, sys
        sys.path.insert(0, {str(common["__path__"].parent)!r})
        from common import run
        model, res = run({str(tmp_path / "ckpt")!r}, epochs=3, dropout=0, flip=False, n_train=32, batch_size=4)
        out = {{"history": res.history.drop(columns="time_s").to_dict("list"),
               "weights": [p.detach().flatten().tolist() for p in model.parameters()]}}
        with open(os.path.join({str(tmp_path)!r}, "rank%s.json" % os.environ["RANK"]), "w") as f:
            json.dump(out, f)
    '''))
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every process ends with the same synchronised numbers and weights
    assert _files(tmp_path / "ckpt") == ["best.pt", "last.pt"]
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["config"]["world_size"] == 2
    # one process with the same global batch (8 = 2 × 4) gives the same run up to float rounding
    model, res = common["run"](None, epochs=3, dropout=0, flip=False, n_train=32, batch_size=8)
    single = res.history.drop(columns="time_s").to_dict("list")
    assert ranks[0]["history"].keys() == single.keys()
    for k, v in single.items():
        np.testing.assert_allclose(ranks[0]["history"][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    for p, q in zip(model.parameters(), ranks[0]["weights"]):
        np.testing.assert_allclose(p.detach().flatten().numpy(), q, rtol=1e-4, atol=1e-6)


class _OwnRNGData(DictDataset):
    """A dataset with its own randomness: a seeded flip transform (torch generator) and a NumPy noise RNG."""

    def __init__(self, *a, **kw):
        from fusionbook.transforms import RandomFlip

        super().__init__(*a, **kw)
        self.transforms = RandomFlip(horizontal_p=0.5, vertical_p=0.5, seed=7)
        self.rng = np.random.default_rng(3)

    def generators(self):
        return [self.transforms, self.rng]

    def __getitem__(self, i):
        item = self.transforms(super().__getitem__(i))
        noise = torch.from_numpy(self.rng.normal(0, 0.3, item["image"].shape).astype("float32"))
        return {**item, "image": item["image"] + noise}


def test_resume_restores_dataset_and_transform_generators(common, tmp_path):
    def run(ckpt, **kw):
        torch.manual_seed(0)
        x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        train = _OwnRNGData(image=x, mask=(x[:, :1] > 0).float())
        model = common["make_model"](0.0)
        res = fit(model, common["task"](), train, common["data"](16, 2), epochs=4, batch_size=8, lr=0.02,
                  progress=False, checkpoint_dir=ckpt, **kw)
        return model, res

    ref_model, ref = run(None)

    def interrupt(state):
        if state.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, callbacks=[interrupt])
    ck = load_checkpoint(tmp_path / "last.pt")
    assert len(ck["data_rng"]["torch"]) == 1 and len(ck["data_rng"]["numpy"]) == 1
    model, res = run(tmp_path)
    assert res.resumed_from_epoch == 2
    assert _same(res.history, ref.history), (res.history, ref.history)
    assert _same_weights(model, ref_model)


def test_paper5_early_stopping_rule(common):
    """Paper 5 (authors' code SebastianHafner/MissingModality @ f0b1764, `_p10` configs): "patience 10" stops
    at the 11th consecutive epoch without improvement = patience=11."""
    model = common["make_model"](0)
    res = fit(model, common["task"](), common["data"](16, 1), common["data"](8, 2), epochs=30, batch_size=8, lr=1e-12,
              patience=11, max_steps_per_epoch=1, progress=False, monitor="val_f1", mode="max")
    assert res.stopped_early and res.best_epoch == 1
    assert list(res.history["epoch"]) == list(range(1, 13))  # epoch 1 best, then 11 epochs without improvement


def test_option_groups_equal_flat_keywords(common):
    grouped = dict(optim=Optimization("adamw", lr=0.02, weight_decay=0.01, grad_clip=1.0),
                   schedule=Schedule("cosine_warm_restarts", {"T_0": 2}),
                   stopping=EarlyStopping("val_f1", "max", patience=3),
                   batching=Batching(sample_weights=np.linspace(0.2, 1.0, 48), val_batch_size=5))
    m1, r1 = common["run"](None, epochs=3, **grouped)
    m2, r2 = common["run"](None, epochs=3, **RECIPES["cosine+shuffle"], lr=0.02, patience=3,
                           sample_weights=np.linspace(0.2, 1.0, 48), val_batch_size=5)
    assert _same(r1.history, r2.history) and _same_weights(m1, m2)
    with pytest.raises(TypeError, match="learning_rate"):
        common["run"](None, epochs=1, learning_rate=0.1)


def test_fit_sets_the_epoch_of_the_data(common, tmp_path):
    class Epochs(DictDataset):
        seen: list = []

        def set_epoch(self, epoch):
            Epochs.seen.append(epoch)

    x = torch.randn(16, 3, 8, 8)
    train = Epochs(image=x, mask=(x[:, :1] > 0).float())
    kw = dict(batch_size=8, progress=False, checkpoint=Checkpointing(dir=tmp_path))
    fit(common["make_model"](0), common["task"](), train, epochs=3, **kw)
    fit(common["make_model"](0), common["task"](), train, epochs=5, **kw)  # resumed: epochs 3 and 4 only
    assert Epochs.seen == [0, 1, 2, 3, 4]


def test_corrupt_last_checkpoint_is_refused(common, tmp_path):
    common["run"](tmp_path / "ok", epochs=2)
    good = (tmp_path / "ok" / "last.pt").read_bytes()
    positions = np.linspace(0, len(good) - 1, 40).astype(int)  # header, pickle, tensor data, checksum line
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 0x10
        path = tmp_path / "bad" / "last.pt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="corrupt"):  # fit refuses to resume from it
        common["run"](tmp_path / "bad", epochs=3)
    (tmp_path / "bad" / "last.pt").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match="no fusionbook checksum"):
        common["run"](tmp_path / "bad", epochs=3)


def test_corrupt_best_checkpoint_does_not_block_resume(common, tmp_path):
    # (a) the best epoch is the last one done: its weights come from last.pt, the resume is exact
    kw = dict(monitor="train_loss", mode="min", dropout=0)
    common["run"](tmp_path / "a", epochs=2, **kw)
    assert load_checkpoint(tmp_path / "a" / "last.pt")["best_epoch"] == 2
    (tmp_path / "a" / "best.pt").write_bytes(b"garbage")
    model, res = common["run"](tmp_path / "a", epochs=4, **kw)
    ref_model, ref = common["run"](None, epochs=4, **kw)
    assert res.resumed_from_epoch == 2 and _same(res.history, ref.history) and _same_weights(model, ref_model)
    # (b) the best epoch is older and its weights are lost: exact training, a clear warning, no best checkpoint
    kw = dict(lr=1e-12, dropout=0)  # nothing improves after epoch 1
    common["run"](tmp_path / "b", epochs=2, **kw)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["best_epoch"] == 1
    raw = bytearray((tmp_path / "b" / "best.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "b" / "best.pt").write_bytes(bytes(raw))
    with pytest.warns(UserWarning) as caught:
        model, res = common["run"](tmp_path / "b", epochs=3, **kw)
    said = " | ".join(str(w.message) for w in caught)
    assert "best.pt is unusable" in said and "holds the last epoch's weights" in said, said
    _, ref = common["run"](None, epochs=3, **kw)
    assert _same(res.history, ref.history) and res.best_epoch == 1 and res.checkpoint is None


def test_resume_on_other_data_is_refused(common, tmp_path):
    common["run"](tmp_path, epochs=2)
    with pytest.raises(ValueError, match="trained on other data .48 samples.*now .40 samples"):
        common["run"](tmp_path, epochs=3, n_train=40)
    other = common["data"](48, 5, True)  # same size, other samples
    with pytest.raises(ValueError, match="trained on other data"):
        fit(common["make_model"](0.2), common["task"](), other, common["data"](24, 2), epochs=3, batch_size=8,
            lr=0.02, progress=False, monitor="val_f1", mode="max", checkpoint_dir=tmp_path)
    _, res = common["run"](tmp_path, epochs=3)  # the right data still resumes
    assert res.resumed_from_epoch == 2


def test_data_fingerprint_of_files(tmp_path):
    class Files(torch.utils.data.Dataset):
        def __init__(self, root):
            self.root = Path(root)

        def __len__(self):
            return 2

        def modality_files(self, i):
            return {"s1": self.root / f"s1_{i}.tif", "s2": [self.root / f"s2_{i}_{b}.tif" for b in range(2)]}

    for root in (tmp_path / "a", tmp_path / "b"):
        root.mkdir()
        for i in range(2):
            for name in (f"s1_{i}.tif", f"s2_{i}_0.tif", f"s2_{i}_1.tif"):
                (root / name).write_bytes(b"x" * (10 + i))
    fa, fb = data_fingerprint(Files(tmp_path / "a")), data_fingerprint(Files(tmp_path / "b"))
    assert fa == fb and fa["kind"] == "files" and fa["n"] == 2  # the folder's location does not matter
    (tmp_path / "b" / "s2_1_1.tif").write_bytes(b"y" * 99)  # another size
    assert data_fingerprint(Files(tmp_path / "b"))["digest"] != fa["digest"]

    class OneDatabase(Files):  # like an LMDB archive: no per-sample files
        def modality_files(self, i):
            raise DatasetError("one LMDB, no per-modality files")

    class Own(OneDatabase):
        def fingerprint(self):
            return {"ids": ["p1", "p2"], "lmdb_bytes": 1234}

    assert data_fingerprint(OneDatabase(tmp_path / "a"))["kind"] == "length"
    own = data_fingerprint(Own(tmp_path / "a"))
    assert own["kind"] == "custom" and own != data_fingerprint(OneDatabase(tmp_path / "a"))


def test_orphaned_temp_files_are_removed(common, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    for name in (".last.pt.k2j3h4.tmp", ".best.pt.a1b2c3.tmp"):
        (tmp_path / name).write_bytes(b"half-written by a killed run")
    common["run"](tmp_path, epochs=1)
    assert _files(tmp_path) == ["best.pt", "last.pt"]


def test_checkpoint_folder_in_use_is_refused(common, tmp_path):
    ckpt = tmp_path / "ckpt"
    code = ("import sys, time\nfrom fusionbook.results import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ckpt)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"checkpoint folder {ckpt} is in use.*process {proc.pid}"):
            common["run"](ckpt, epochs=1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    _, res = common["run"](ckpt, epochs=1)  # the killed holder left the folder free
    assert res.last_checkpoint is not None


def test_progress_goes_to_the_terminal_under_papermill(tmp_path):
    import nbformat

    cell = textwrap.dedent('''
        import torch
        from torch import nn
        from fusionbook.train import DictDataset, Task, fit, progress_stream, with_target
        import sys
        x = torch.randn(16, 3, 8, 8)
        data = DictDataset(image=x, mask=(x[:, :1] > 0).float())
        task = Task(loss=with_target(nn.functional.binary_cross_entropy_with_logits))
        fit(nn.Conv2d(3, 1, 1), task, data, data, epochs=2, batch_size=8, progress=True)
        print("stream is __stderr__:", progress_stream() is sys.__stderr__)
    ''')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nbformat.write(nb, tmp_path / "in.ipynb")
    script = (f"import papermill; papermill.execute_notebook({str(tmp_path / 'in.ipynb')!r}, "
              f"{str(tmp_path / 'out.ipynb')!r}, kernel_name='python3', progress_bar=False)")
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs
    page = "".join(o.get("text", "") for o in outputs)
    assert "stream is __stderr__: True" in page
    assert "train_loss=" not in page and "validate" not in page  # no progress bar on the page ...
    assert "train_loss=" in proc.stderr  # ... it went to the terminal


def test_batchnorm_on_a_single_value_names_the_parameters():
    "A batch (or crop) too small for batch normalisation stops with a message naming batch_size / crop_size."
    from torch import nn

    from fusionbook.train import DictDataset, Task, fit

    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4, 1))
    data = DictDataset(image=torch.randn(3, 2, 8, 8), target=torch.randn(3, 1))
    task = Task(loss=lambda out, batch: ((out - batch["target"]) ** 2).mean(), input_key="image")
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, task, data, epochs=1, batch_size=1, progress=False, device="cpu")
