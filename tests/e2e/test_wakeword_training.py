"""The training and evaluation CLIs end to end, at a tiny scale (the real run takes ~2.5 + 3 minutes)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voxserve.server.stages.wakeword_model import Head

from ..conftest import SHARED, shared_or_skip

pytestmark = pytest.mark.slow


def test_train_and_eval_cli_produce_a_loadable_head_and_a_report(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; make test installs it as root)")
    pytest.importorskip("torch", reason="training needs PyTorch (pip install 'voxserve[export]')")
    shared_or_skip("eval", "speech")
    exe = str(Path(sys.executable).parent / "voxserve-wakeword")
    out = tmp_path / "hey_computer.onnx"
    subprocess.run([exe, "train", "hey computer", "--out", str(out), "--positives", "24", "--adversarial", "24",
                    "--sentences", "10", "--epochs", "2"], check=True, capture_output=True, timeout=300)
    head = Head.load(out)
    assert head.n_embeddings == 16 and head.flavour == "oww" and head.batchable
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["phrase"] == "hey computer" and meta["config"]["positives"] == 24
    report = tmp_path / "report"
    subprocess.run([exe, "eval", str(out), "--phrase", "hey computer", "--out", str(report), "--shared", str(SHARED),
                    "--positives", "8", "--synthetic-minutes", "0.2"], check=True, capture_output=True, timeout=300)
    result = json.loads((report / "wakeword-eval.json").read_text())
    assert result["positives"] == 8 and len(result["det"]) == 19 and result["negative_hours"] > 0
    assert "| threshold | FRR % |" in (report / "wakeword-eval.md").read_text()
    assert (report / "wakeword-det.png").stat().st_size > 1000
