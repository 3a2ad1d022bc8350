"""Static checks that catch real bugs (undefined names, unused imports, syntax): ruff's F and E9 rules."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_pyflakes_clean():
    exe = Path(sys.executable).parent / "ruff"
    ruff = str(exe) if exe.exists() else shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install 'voxserve[dev]')")
    out = subprocess.run([ruff, "check", "--select", "F,E9", "server", "engines", "clients", "models", "bench", "tests"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
