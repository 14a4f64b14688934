"""Packaging: pyproject.toml is the one source of metadata; the sdist and the wheel install into a fresh venv and
the installed package finds its chapters and assets (not in a source checkout)."""

import configparser
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_metadata_in_one_place_and_consistent_with_nbdev_settings():
    proj = _pyproject()["project"]
    ini = configparser.ConfigParser(delimiters=["="])
    ini.read(ROOT / "settings.ini", encoding="utf-8")
    c = ini["DEFAULT"]
    assert "requirements" not in c and "dev_requirements" not in c  # dependencies live in pyproject.toml only
    assert not (ROOT / "setup.py").exists()
    assert proj["name"] == c["lib_name"] and proj["description"] == c["description"]
    assert proj["requires-python"] == f">={c['min_python']}"
    import fusionbook

    assert fusionbook.__version__ == c["version"]  # pyproject reads the version nbdev writes into __init__
    assert any(d.startswith("torch>=2.4,<2.14") for d in proj["dependencies"])
    extras = proj["optional-dependencies"]
    assert {"book", "dev", "all"} <= set(extras) and extras["book"] != extras["dev"]
    for tool in ("pytest-xdist", "ruff", "bigearthnet-common", "nbdev"):
        assert any(d.startswith(tool) for d in extras["dev"]), tool
    assert any(d.startswith("papermill") for d in extras["book"])
    assert not any(d.startswith(("pytest", "ruff")) for d in extras["book"])  # readers do not get test tools


def test_constraints_pin_every_declared_dependency():
    pins = {ln.split("==")[0].lower().replace("_", "-") for ln in (ROOT / "constraints.txt").read_text().splitlines()
            if "==" in ln and not ln.startswith("#")}
    proj = _pyproject()["project"]
    reqs = proj["dependencies"] + [d for ds in proj["optional-dependencies"].values() for d in ds]
    names = {r.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for r in reqs}
    assert names - {"fusionbook"} <= pins, sorted(names - {"fusionbook"} - pins)


def _fresh_venv(path: Path) -> Path:
    """A venv without pip or setuptools of its own that sees this environment's packages *after* its own
    site-packages (a .pth line): installs need no network and no copy of torch."""
    venv.create(path, with_pip=False, symlinks=True)
    py = path / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


def _pip(py: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                    "--no-index", "--no-build-isolation", "--disable-pip-version-check", *args], check=True)


_CHECK = """
import json, sys
from importlib import metadata, resources
from pathlib import Path
import fusionbook, fusionbook.cli as cli
pkg = Path(fusionbook.__file__).parent
print(json.dumps({
    "file": str(pkg), "prefix": sys.prefix, "version": fusionbook.__version__,
    "dist_version": metadata.version("fusionbook"),
    "chapters": {k: str(v) for k, v in cli.list_chapters().items()},
    "asset": (resources.files("fusionbook.data") / "assets" / "spacenet7_s1s2_metadata.json").is_file(),
    "samples": str(cli.samples_dir()),
}))
"""


@pytest.mark.slow
def test_sdist_and_wheel_install_into_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    # python -m build: the sdist, then the wheel built from the sdist (so the sdist is complete)
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True)
    (sdist,) = dist.glob("fusionbook-*.tar.gz")
    (wheel,) = dist.glob("fusionbook-*.whl")
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    for name, artefact in (("wheel", wheel), ("sdist", sdist)):
        py = _fresh_venv(tmp_path / f"venv-{name}")
        _pip(py, str(artefact))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUSIONBOOK_")}
        res = subprocess.run([py, "-c", _CHECK], capture_output=True, text=True, check=True, cwd=elsewhere, env=env)
        info = json.loads(res.stdout)
        assert info["file"].startswith(str(tmp_path / f"venv-{name}")), info  # the installed copy, not the checkout
        assert info["version"] == info["dist_version"]
        assert list(info["chapters"]) == ["data", "paper1", "paper2", "paper3", "paper4", "paper5", "crossmethod",
                                          "robustness"]
        assert all(p.startswith(info["file"]) for p in info["chapters"].values())
        assert info["asset"] and info["samples"] == "None"  # no checkout: no vendored samples, said by None
        for argv in (["--version"], ["run", "--help"]):
            out = subprocess.run([tmp_path / f"venv-{name}" / "bin" / "fusionbook", *argv], capture_output=True,
                                 text=True, check=True, cwd=elsewhere, env=env).stdout
            assert "fusionbook" in out
        out = subprocess.run([py, "-m", "fusionbook", "--version"], capture_output=True, text=True, check=True,
                             cwd=elsewhere, env=env).stdout
        assert out.strip() == f"fusionbook {info['version']}"
    assert not list(elsewhere.iterdir())  # nothing was written into the working folder


def test_citation_file_matches_the_package():
    import yaml

    import fusionbook

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["version"] == fusionbook.__version__ and cff["license"] == _pyproject()["project"]["license"]
    assert (ROOT / ".nojekyll").is_file()
