"""The command line: listing, validation before any kernel starts, simulation, and a chapter that refuses bad input."""

import json

import pytest

from fusionbook.cli import chapter_parameters, list_chapters, main, parse_value


def test_chapters_listed_with_parameters(capsys):
    assert main(["chapters"]) == 0
    out = capsys.readouterr().out
    assert "data:" in out and "paper2:" in out
    assert list(list_chapters())[:2] == ["data", "paper2"]
    params = chapter_parameters("paper2")
    assert {"profile", "data_root", "device", "seeds", "out_dir"} <= set(params)
    assert params["profile"]["default"].strip("'\"") == "smoke"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "paper9"], "valid chapters: data, paper2"),
        (["run", "paper2", "--profile", "fast"], "valid profiles: smoke, paper"),
        (["run", "paper2", "-p", "learning_rate", "0.1"], "valid parameters:"),
    ],
)
def test_run_refuses_bad_input_before_starting(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was executed or written


def test_parse_value_yaml():
    assert parse_value("[0, 1, 2]") == [0, 1, 2] and parse_value("1e-4") == 1e-4 and parse_value("none") is None


def test_simulate_command(tmp_path, capsys):
    root = tmp_path / "ben"
    assert main(["simulate", "bigearthnet", str(root), "--n", "2", "--seed", "1", "-k", "cloud_rate", "0.3"]) == 0
    rec = json.loads((root / "fusionbook_simulation.json").read_text())
    assert (rec["n"], rec["seed"], rec["knobs"]["cloud_rate"]) == (2, 1, 0.3)
    assert main(["simulate", "eurosat", str(tmp_path / "x")]) == 2
    assert "valid datasets" in capsys.readouterr().err


def test_paper_profile_without_data_root_stops_with_the_chapters_message(tmp_path, capsys):
    assert main(["run", "paper2", "--profile", "paper", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "data_root" in err
    assert not (tmp_path / "paper2.ipynb").exists()  # no executed notebook is published for a failed run
