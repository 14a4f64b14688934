"""Test setup: every file the tests (and the kernels and libraries they start) write goes to a temporary folder."""

import atexit
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_TMP = tempfile.mkdtemp(prefix="fusionbook-tests-")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
# before matplotlib, IPython or a Jupyter kernel is imported or started by any test
for var, sub in {"MPLCONFIGDIR": "matplotlib", "IPYTHONDIR": "ipython", "JUPYTER_CONFIG_DIR": "jupyter",
                 "JUPYTER_DATA_DIR": "jupyter-data", "FUSIONBOOK_CACHE": "cache", "XDG_CACHE_HOME": "xdg-cache",
                 "XDG_CONFIG_HOME": "xdg-config"}.items():
    os.environ[var] = os.path.join(_TMP, sub)
    os.makedirs(os.environ[var], exist_ok=True)
os.environ.setdefault("MPLBACKEND", "Agg")


def _tree_digest(root: Path) -> str:
    "SHA-256 over the relative paths and bytes of every file under ``root`` (byte-identity of simulated datasets)."
    h = hashlib.sha256()
    for p in sorted(q for q in Path(root).rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def tree_digest():
    "The `_tree_digest` function, for tests of the simulators' determinism."
    return _tree_digest
