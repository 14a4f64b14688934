"""The experiment recipe across processes: a run holds its output folder, results of different experiments in
one folder never overwrite each other, and the configuration digest ignores operational fields."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from fusionbook.experiments import paper2 as p2
from fusionbook.experiments.recipe import Run
from fusionbook.results import FolderInUseError, read_results

TINY = dict(base_channels=4, crop_size=16, sim_tiles=6, sim_tile_size=32, batch_size=2, epochs=1, seeds=(0,),
            planted_crop_size=16)


def _start(out, **over):
    return Run.start("paper2", p2.PROFILES, profile="smoke", out_dir=out, dataset="mapinwild",
                     simulate=p2.simulation, overrides={**TINY, **over}, device="cpu")


def test_second_run_into_a_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from fusionbook.results import run_lock
        with run_lock({str(out)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match="in use by another run"):
            _start(out)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    _start(out).close()  # free again once the other process is gone


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ValueError, match="out_dir"):
        _start(f)


def test_two_experiments_share_a_results_file(tmp_path):
    out = tmp_path / "out"
    a = _start(out)
    a.writer.add("Table I", "all", "MAE", 0.5, seed=0)
    a.close()
    b = _start(out, lr=5e-3)
    b.writer.add("Table I", "all", "MAE", 0.7, seed=0)
    b.close()
    assert a.digest != b.digest
    df = read_results(out / "results.json")
    got = dict(zip(df["config"], df["reproduced"]))
    assert got == {a.digest: 0.5, b.digest: 0.7}  # the second experiment kept the first one's row
