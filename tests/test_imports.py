"""Plotting and reporting are imported lazily: numerical code never pulls in matplotlib."""

import subprocess
import sys


def test_importing_pkmodel_does_not_import_matplotlib():
    code = "import sys, pkmodel, pkmodel.estimation, pkmodel.response; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_public_api_is_documented():
    import pkmodel

    missing = [name for name in pkmodel.__all__ if not (getattr(pkmodel, name).__doc__ or "").strip()]
    assert missing == []
