"""The command line: listing, validation before any kernel starts, simulation, and a chapter that refuses bad input."""

import json

import pytest

from fusionbook.cli import chapter_parameters, list_chapters, main, parse_value


def test_chapters_listed_with_parameters(capsys):
    assert main(["chapters"]) == 0
    out = capsys.readouterr().out
    assert "data:" in out and "paper2:" in out
    assert list(list_chapters()) == ["data", "paper1", "paper2", "paper3", "paper4", "paper5", "crossmethod",
                                   "robustness"]
    params = chapter_parameters("paper2")
    assert {"profile", "data_root", "device", "seeds", "out_dir"} <= set(params)
    assert params["profile"]["default"].strip("'\"") == "smoke"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "paper9"], "invalid choice: 'paper9'"),
        (["run", "paper2", "--profile", "fast"], "invalid choice: 'fast'"),
    ],
)
def test_argparse_refuses_unknown_choices(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was executed or written


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "paper2", "-p", "learning_rate", "0.1"], "valid parameters:"),
        (["run", "data", "--data-root", "/nonexistent/samples"], "'/nonexistent/samples' is not an existing folder"),
    ],
)
def test_run_refuses_bad_input_before_starting(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was executed or written


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    assert main(["run", "data", "--out", str(f)]) == 2
    assert "--out" in capsys.readouterr().err and f.read_text() == "keep me"


def test_version_and_python_m(capsys):
    import subprocess
    import sys

    from fusionbook import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fusionbook {__version__}"
    res = subprocess.run([sys.executable, "-m", "fusionbook", "chapters"], capture_output=True, text=True, check=True)
    assert "paper2:" in res.stdout
    assert "data_root = None  #" in res.stdout  # a None default is not described as a str


def test_parse_value_yaml():
    assert parse_value("[0, 1, 2]") == [0, 1, 2] and parse_value("1e-4") == 1e-4 and parse_value("none") is None


def test_simulate_command(tmp_path, capsys):
    root = tmp_path / "ben"
    assert main(["simulate", "bigearthnet", str(root), "--n", "2", "--seed", "1", "-k", "cloud_rate", "0.3"]) == 0
    from fusionbook.data.simulate import MANIFEST

    rec = json.loads((root / MANIFEST).read_text())
    assert (rec["n"], rec["seed"], rec["knobs"]["cloud_rate"]) == (2, 1, 0.3)
    with pytest.raises(SystemExit):
        main(["simulate", "eurosat", str(tmp_path / "x")])
    assert "invalid choice: 'eurosat'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_paper_profile_without_data_root_stops_with_the_chapters_message(tmp_path, capsys):
    assert main(["run", "paper2", "--profile", "paper", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "data_root" in err
    assert not (tmp_path / "paper2.ipynb").exists()  # no executed notebook is published for a failed run
