"""Test setup: every file the tests (and the kernels and libraries they start) write goes to a temporary folder."""

import atexit
import os
import shutil
import tempfile

_TMP = tempfile.mkdtemp(prefix="fusionbook-tests-")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
# before matplotlib, IPython or a Jupyter kernel is imported or started by any test
for var, sub in {"MPLCONFIGDIR": "matplotlib", "IPYTHONDIR": "ipython", "JUPYTER_CONFIG_DIR": "jupyter",
                 "JUPYTER_DATA_DIR": "jupyter-data", "FUSIONBOOK_CACHE": "cache", "XDG_CACHE_HOME": "xdg-cache",
                 "XDG_CONFIG_HOME": "xdg-config"}.items():
    os.environ[var] = os.path.join(_TMP, sub)
    os.makedirs(os.environ[var], exist_ok=True)
os.environ.setdefault("MPLBACKEND", "Agg")
