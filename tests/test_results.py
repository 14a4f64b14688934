"""Profiles, provenance, results files (atomic, merged, keyed by config, safe under concurrent writers), the run lock
and the published-vs-reproduced table."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pandas as pd
import pytest

import fusionbook
from fusionbook.results import (
    RESULT_KEY,
    FolderInUseError,
    ResultsWriter,
    check_profile,
    coerce,
    compare_markdown,
    compare_table,
    format_compare,
    git_commit,
    profile_table,
    provenance,
    read_results,
    resolve_profile,
    results_done,
    run_lock,
    style_compare,
    write_results,
)


@dataclasses.dataclass(frozen=True)
class Crop:
    size: int = 64
    random: bool = True


@dataclasses.dataclass(frozen=True)
class Cfg:
    epochs: int = 100
    lr: float = 1e-5
    phi: float = 1e-2
    optimizer: Literal["adam", "adamw"] = "adamw"
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    topology: list[int] = dataclasses.field(default_factory=lambda: [64, 128, 256, 512])
    patience: int | None = 10
    data_root: Path | None = None
    loss_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    crop: Crop = Crop()
    amp: bool = False

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


PROFILES = {"smoke": Cfg(epochs=2, seeds=(0,), topology=[8, 16]), "paper": Cfg()}


def test_resolve_profile_coerces_values():
    cfg = resolve_profile(PROFILES, "smoke", {
        "epochs": "3", "lr": "1e-4", "phi": 1, "optimizer": "adam", "seeds": "[0, 1, 2]", "topology": ("4", 8),
        "patience": "None", "data_root": "/data/sn7", "loss_weights": {"fuse": "2"}, "crop": {"size": "32"},
        "amp": "yes",
    })
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.lr == 1e-4 and cfg.phi == 1.0 and isinstance(cfg.phi, float) and cfg.optimizer == "adam"
    assert cfg.seeds == (0, 1, 2) and cfg.topology == [4, 8] and cfg.patience is None
    assert cfg.data_root == Path("/data/sn7") and cfg.loss_weights == {"fuse": 2.0}
    assert cfg.crop == Crop(32, True) and cfg.amp is True
    assert PROFILES["smoke"].epochs == 2  # profiles themselves are never modified
    assert resolve_profile(PROFILES, "paper") == Cfg() and resolve_profile(PROFILES, "paper", None) == Cfg()
    assert resolve_profile(PROFILES, "smoke", {"seeds": "0,1"}).seeds == (0, 1)
    assert resolve_profile(PROFILES, "smoke", {"epochs": 4.0}).epochs == 4


@pytest.mark.parametrize("name, overrides, match", [
    ("full", None, "unknown profile 'full'; valid profiles: smoke, paper"),
    ("smoke", {"epoch": 3}, r"unknown parameter\(s\) \['epoch'\] for profile 'smoke'; valid keys: epochs, lr"),
    ("smoke", {"epochs": "ten"}, "smoke.epochs: expected int, got 'ten'"),
    ("smoke", {"epochs": True}, "smoke.epochs: expected int"),
    ("smoke", {"epochs": 2.5}, "smoke.epochs: expected int"),
    ("smoke", {"lr": "fast"}, "smoke.lr: expected float"),
    ("smoke", {"optimizer": "sgd"}, r"'sgd' is not one of the valid choices \['adam', 'adamw'\]"),
    ("smoke", {"amp": "maybe"}, "smoke.amp: expected bool"),
    ("smoke", {"seeds": ["a"]}, r"smoke.seeds\[0\]: expected int"),
    ("smoke", {"crop": {"width": 3}}, r"unknown key\(s\) \['width'\]; valid keys: random, size"),
    ("smoke", {"lr": -1}, "lr must be > 0"),  # the dataclass's own __post_init__ check
])
def test_resolve_profile_errors(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve_profile(PROFILES, name, overrides)


def test_resolve_profile_needs_dataclass_instances():
    with pytest.raises(TypeError, match="dataclass instance"):
        resolve_profile({"smoke": {"epochs": 2}}, "smoke")
    assert coerce("x", object) == "x" and coerce(None, int | None) is None


def test_check_profile_and_table():
    check_profile(PROFILES["paper"], {"epochs": 100, "lr": 1e-5, "optimizer": "adamw", "patience": 10})
    with pytest.raises(AssertionError, match=r"epochs = 2, expected 100; .*momentum: missing"):
        check_profile(PROFILES["smoke"], {"epochs": 100, "momentum": 0.9}, what="smoke profile")
    table = profile_table(PROFILES)
    assert list(table.columns) == ["smoke", "paper"] and "lr" in table.index
    diff = profile_table(PROFILES, only_differences=True)
    assert set(diff.index) == {"epochs", "seeds", "topology"}
    assert diff.loc["epochs", "smoke"] == 2 and diff.loc["epochs", "paper"] == 100


def test_provenance_fields_and_no_hostname():
    prov = provenance(profile="smoke", data_root=Path("/data"), simulator={"seed": 3}, wall_time_s=1.5)
    for key in ("fusionbook", "git_commit", "python", "torch", "cuda", "device", "timestamp_utc"):
        assert key in prov, key
    assert prov["fusionbook"] == fusionbook.__version__ and prov["data_root"] == "/data"
    assert prov["simulator"] == {"seed": 3} and prov["wall_time_s"] == 1.5
    text = json.dumps(prov)  # plain JSON
    host = socket.gethostname()
    assert len(host) < 4 or host not in text
    assert not any(k in prov for k in ("host", "hostname", "node"))
    with pytest.raises(ValueError, match="overwrite"):
        provenance(torch="1.0")


def test_git_commit_never_fails(tmp_path, monkeypatch):
    assert git_commit(tmp_path) is None  # not a checkout
    assert git_commit(tmp_path / "missing") is None
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    try:
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        (repo / "f.txt").write_text("x")
        subprocess.run(["git", "add", "f.txt"], cwd=repo, check=True)
        subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=repo, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not usable here")
    sha = git_commit(repo)
    assert sha is not None and len(sha) == 40
    monkeypatch.setenv("PATH", "")  # no git executable at all
    assert git_commit(repo) is None


def _row(setting, seed, value, metric="F1", published=0.5, **extra):
    return {"table": "Table 1", "setting": setting, "metric": metric, "published": published,
            "reproduced": value, "seed": seed, "profile": "smoke", **extra}


def test_write_read_roundtrip_and_merge(tmp_path):
    path = tmp_path / "out" / "results.json"
    prov1 = {"git_commit": "a" * 40, "profile": "smoke"}
    df = write_results(path, [_row("SAR", 0, 0.4, split="test"), _row("SAR", 1, float("nan"))], prov1)
    assert len(df) == 2 and math.isnan(df["reproduced"].iloc[1])
    assert list(df.columns[:8]) == ["table", "setting", "metric", "published", "reproduced", "seed", "profile",
                                    "config"]
    # atomic: no temporary file left (only the hidden lock file of the read-merge-write)
    assert sorted(p.name for p in path.parent.iterdir()) == [".results.json.lock", "results.json"]
    back = read_results(path)
    assert back.attrs["provenance"] == prov1 and back["split"].iloc[0] == "test"
    # merge: same key replaces, other rows are kept, a new provenance goes on top of the history
    prov2 = {"git_commit": "b" * 40, "profile": "smoke"}
    write_results(path, [_row("SAR", 1, 0.45), _row("Fusion", 0, 0.6)], prov2)
    back = read_results(path)
    assert len(back) == 3 and back.loc[back["seed"] == 1, "reproduced"].item() == 0.45
    assert back.attrs["provenance"] == prov2 and back.attrs["provenance_history"] == [prov1]
    raw = json.loads(path.read_text())
    assert raw["format"] == "fusionbook-results" and len(raw["rows"]) == 3
    # the same provenance again does not grow the history; replace=True starts over
    write_results(path, [_row("SAR", 2, 0.5)], prov2)
    assert read_results(path).attrs["provenance_history"] == [prov1]
    assert len(write_results(path, pd.DataFrame([_row("Opt", 0, 0.7)]), prov2, replace=True)) == 1


def test_results_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['reproduced'\]"):
        write_results(tmp_path / "r.json", [{"table": "T", "setting": "s", "metric": "m"}])
    with pytest.raises(TypeError, match="reproduced must be a number"):
        write_results(tmp_path / "r.json", [_row("SAR", 0, "high")])
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        read_results(tmp_path / "nothing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_results(bad)
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a fusionbook results file"):
        results_done(bad, table="T")


def test_resumed_chapter_skips_finished_work(tmp_path):
    path = tmp_path / "results.json"
    first = ResultsWriter(path, {"session": 1}, profile="smoke")
    assert not first.done(table="Table 1", setting="SAR", seed=0) and first.frame().empty
    for seed in (0, 1):
        first.add("Table 1", "SAR", "F1", 0.4 + seed / 100, published=0.613, seed=seed)
    # the chapter is interrupted; a new session skips finished seeds
    second = ResultsWriter(path, {"session": 2}, profile="smoke")
    todo = [s for s in (0, 1, 2) if not second.done(table="Table 1", setting="SAR", metric="F1", seed=s)]
    assert todo == [2]
    assert not second.done(table="Table 1", seed=0, profile="paper")
    for seed in todo:
        second.add("Table 1", "SAR", "F1", 0.42, published=0.613, seed=seed)
    second.update_provenance(wall_time_s=12.5)
    df = second.frame()
    assert sorted(df["seed"]) == [0, 1, 2] and set(df["profile"]) == {"smoke"}
    assert df.attrs["provenance"] == {"session": 2, "wall_time_s": 12.5}
    assert df.attrs["provenance_history"] == [{"session": 1}]
    assert results_done(path, {"setting": "SAR"}, seed=2) and not results_done(path, setting="Fusion")
    with pytest.raises(ValueError, match="at least one column"):
        results_done(path)


def test_compare_table(tmp_path):
    rows = [_row("SAR", s, v, published=0.613, published_sd=0.006) for s, v in [(1, 0.60), (2, 0.62), (3, 0.64)]]
    rows += [_row("Fusion", 1, 0.70, published=0.682), _row("Fusion", 1, 0.9, profile="paper")]
    rows += [_row("Fusion", 1, 0.8, metric="IoU", published=None)]
    path = tmp_path / "results.json"
    write_results(path, rows, provenance(profile="smoke", data_root="/data/SEN12_GUM"))
    df = read_results(path)
    with pytest.raises(ValueError, match=r"mix profiles \['paper', 'smoke'\]"):
        compare_table(df)
    table = compare_table(df, profile="smoke")
    assert list(table["setting"]) == ["SAR", "Fusion", "Fusion"] and list(table["metric"]) == ["F1", "F1", "IoU"]
    sar = table.iloc[0]
    assert sar["n_seeds"] == 3 and sar["reproduced_mean"] == pytest.approx(0.62)
    assert sar["reproduced_sd"] == pytest.approx(0.02) and sar["difference"] == pytest.approx(0.62 - 0.613)
    assert math.isnan(table.iloc[1]["reproduced_sd"]) and math.isnan(table.iloc[2]["difference"])
    cap = table.attrs["caption"]
    assert "Profile: smoke" in cap and "real dataset at /data/SEN12_GUM" in cap and "Seeds: 1, 2, 3 (n = 3)" in cap
    commit = df.attrs["provenance"]["git_commit"]
    assert f"Commit: {commit[:10]}" in cap if commit else "Commit: unknown" in cap
    shown = format_compare(table)
    assert list(shown["published"]) == ["0.613 ± 0.006", "0.682", "–"]
    assert list(shown["reproduced"]) == ["0.620 ± 0.020", "0.700", "0.800"]
    assert list(shown["difference"]) == ["+0.007", "+0.018", "–"]
    md = compare_markdown(table)
    assert md.startswith("| table | setting | metric | published | reproduced | difference | seeds |") and cap in md
    assert cap in style_compare(table).to_html()
    paper = compare_table(df, profile="paper", provenance={"simulator": {"seed": 0}})
    assert "simulated data (simulator seed 0)" in paper.attrs["caption"]
    with pytest.raises(ValueError, match="rows disagree on the published value"):
        compare_table(pd.DataFrame([_row("SAR", 0, 0.1, published=0.5), _row("SAR", 1, 0.2, published=0.6)]))
    with pytest.raises(ValueError, match="no rows for profile 'full'"):
        compare_table(df, profile="full")


def test_rows_of_another_config_are_never_replaced(tmp_path):
    path = tmp_path / "results.json"
    assert "config" in RESULT_KEY
    first = ResultsWriter(path, {"run": 1}, profile="smoke", config="aaaa1111")
    for seed in (0, 1):
        first.add("Table I", "S2", "MAE", 0.1 + seed, seed=seed)
    # a rerun into the same folder with other parameters: the same table/setting/metric/seed, another digest
    second = ResultsWriter(path, {"run": 2}, profile="smoke", config="bbbb2222")
    assert not second.done(table="Table I", setting="S2", seed=0) and first.done(table="Table I", seed=0)
    second.add("Table I", "S2", "MAE", 9.0, seed=0)
    first.add("Table I", "S2", "MAE", 0.5, seed=1)  # the same experiment replaces its own row
    df = read_results(path)
    got = sorted(zip(df["config"], df["seed"], df["reproduced"]))
    assert got == [("aaaa1111", 0, 0.1), ("aaaa1111", 1, 0.5), ("bbbb2222", 0, 9.0)]
    with pytest.raises(ValueError, match=r"mix configs \['aaaa1111', 'bbbb2222'\]"):
        compare_table(df)
    assert compare_table(df, config="aaaa1111")["n_seeds"].tolist() == [2]
    with pytest.raises(ValueError, match="no rows for config 'cccc'"):
        compare_table(df, config="cccc")


def _write_rows(path: str, writer: int, n: int, barrier) -> None:
    w = ResultsWriter(path, {"writer": writer}, profile="smoke", config="c0ffee")
    barrier.wait()
    for i in range(n):
        w.add("Table", f"writer{writer}", "MAE", float(i), seed=i)


def test_concurrent_writers_keep_every_row(tmp_path):
    """Three processes write 40 rows each into one results file at the same time: all 120 rows are kept."""
    path = tmp_path / "results.json"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_write_rows, args=(str(path), k, 40, barrier)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    df = read_results(path)
    assert len(df) == 120
    assert sorted(zip(df["setting"], df["seed"])) == sorted((f"writer{k}", i) for k in range(3) for i in range(40))
    assert all(df["reproduced"] == df["seed"].astype(float))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".results.json.lock", "results.json"]  # no temp files


def _hold(folder: str, ready, release) -> None:
    with run_lock(folder):
        ready.set()
        release.wait(120)


def test_run_lock_refuses_a_second_run(tmp_path):
    out = tmp_path / "out"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(out), ready, release))
    holder.start()
    try:
        assert ready.wait(120)
        busy = f"output folder {out} is in use by another run .process {holder.pid}"
        with pytest.raises(FolderInUseError, match=busy):
            with run_lock(out):
                pass
    finally:
        release.set()
        holder.join(60)
    assert holder.exitcode == 0
    with run_lock(out) as held:  # free again once the holder finished
        assert held == out and json.loads((out / ".fusionbook-run.json").read_text())["pid"] == os.getpid()
        with run_lock(out):  # re-entrant within one process
            pass
    assert not (out / ".fusionbook-run.json").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        with run_lock(tmp_path / "file"):
            pass


def test_run_lock_is_released_when_the_holder_is_killed(tmp_path):
    code = ("import sys, time\nfrom fusionbook.results import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=str(tmp_path)):
            with run_lock(tmp_path):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    with run_lock(tmp_path):  # the operating system released the killed holder's lock
        pass
