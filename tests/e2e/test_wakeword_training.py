"""The training and evaluation CLIs end to end, at a tiny scale (the real run takes ~2.5 + 3 minutes)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voxserve.models.tts import PiperVoice
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
                    "--sentences", "10", "--epochs", "2", "--ensemble", "2", "--random-voices", "0.5",
                    "--confusable", "8", "--kokoro-positives", "3", "--kokoro-confusable", "2", "--kokoro-sentences", "1",
                    "--tone-streams", "1", "--mine", "12", "--mine-epochs", "1",
                    *(["--piper-voices", "0.3"] if PiperVoice.available() else [])],
                   check=True, capture_output=True, timeout=300)
    head = Head.load(out)
    assert head.n_embeddings == 16 and head.flavour == "oww" and head.batchable
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["phrase"] == "hey computer" and meta["config"]["positives"] == 24 and meta["members"] == 2
    assert meta["config"]["random_voices"] == 0.5 and "threshold" not in meta
    report = tmp_path / "report"
    subprocess.run([exe, "eval", str(out), "--phrase", "hey computer", "--out", str(report), "--shared", str(SHARED),
                    "--positives", "8", "--synthetic-minutes", "0.2", "--max-fa-per-hour", "100000",
                    "--natural-positives", "3", "--confusable", "4", "--natural-confusable", "2", "--tone-minutes", "0.5",
                    "--write-threshold"], check=True, capture_output=True, timeout=300)
    result = json.loads((report / "wakeword-eval.json").read_text())
    assert len(result["det"]) == 19 and result["negative_hours"] > 0
    cats = result["by_category_at_0.5"]
    assert cats["positives: synthetic"]["count"] == 8 and cats["positives: stream_start"]["count"] >= 2
    assert cats["negatives: confusable"]["streams"] >= 4 and cats["negatives: tones"]["streams"] >= 1
    assert result["positives"] == sum(v["count"] for k, v in cats.items() if k.startswith("positives"))
    assert meta["warmup_steps"] == 4
    assert "| threshold | FRR % |" in (report / "wakeword-eval.md").read_text()
    op = result["operating_point"]                   # any threshold meets 100000/h: the fewest misses wins
    assert op["frr"] == min(r["frr"] for r in result["det"])
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["threshold"] == op["threshold"] == Head.load(out).threshold
    assert meta["phrase"] == "hey computer" and meta["calibration"]["max_fa_per_hour"] == 100000
    assert (report / "wakeword-det.png").stat().st_size > 1000


def test_averaged_heads_export_scores_the_mean_of_the_members(tmp_path):
    torch = pytest.importorskip("torch", reason="training needs PyTorch (pip install 'voxserve[export]')")
    import numpy as np

    from voxserve.models.wakeword_train import AveragedHeads, TrainConfig, export_head, make_head

    torch.manual_seed(0)
    members = [make_head().eval() for _ in range(3)]
    out = tmp_path / "avg.onnx"
    export_head(AveragedHeads.build(members), out, TrainConfig("hey test"), {})
    x = np.random.default_rng(0).standard_normal((5, 16, 96)).astype(np.float32)
    with torch.no_grad():
        expect = torch.stack([m(torch.from_numpy(x)) for m in members]).mean(0).numpy().reshape(-1)
        single = members[0](torch.from_numpy(x)).numpy().reshape(-1)
    got = Head.load(out).score(x)
    np.testing.assert_allclose(got, expect, atol=1e-5)
    assert np.abs(got - single).max() > 1e-3                 # the mean, not just the first member


@pytest.mark.parametrize("kind", ["mlp", "wide", "conv"])
def test_every_head_kind_cascaded_with_a_verifier_exports_what_torch_scores(tmp_path, kind):
    """Each architecture of ``--head``, with ``--verifier``, exports one ONNX graph that the server loads
    and that scores sqrt(head * verifier), as in torch."""
    torch = pytest.importorskip("torch", reason="training needs PyTorch (pip install 'voxserve[export]')")
    import numpy as np

    from voxserve.models.wakeword_train import Cascade, TrainConfig, export_head, make_head

    torch.manual_seed(0)
    head, verifier = make_head(kind=kind, dropout=0.3).eval(), make_head(kind=kind).eval()
    out = tmp_path / f"{kind}.onnx"
    export_head(Cascade.build(head, verifier), out, TrainConfig("hey test", head=kind, verifier=True), {})
    x = np.random.default_rng(0).standard_normal((7, 16, 96)).astype(np.float32)
    with torch.no_grad():
        a, b = (m(torch.from_numpy(x)).numpy().reshape(-1) for m in (head, verifier))
    got = Head.load(out).score(x)
    assert got.shape == (7,) and np.all((got >= 0) & (got <= 1))
    np.testing.assert_allclose(got, np.sqrt(a * b), atol=1e-5)
    assert np.abs(got - a).max() > 1e-3 and np.abs(got - b).max() > 1e-3
    assert json.loads(out.with_suffix(".json").read_text())["config"]["head"] == kind
    with pytest.raises(ValueError, match="head kind"):
        make_head(kind="transformer")


def test_fit_member_mines_the_pool_and_cascades_a_verifier_when_asked(monkeypatch):
    """fit_member is train()'s recipe for one member: train, add the pool windows the head scores >= 0.05
    as negatives and fine-tune, then (``verifier``) train the verifier on what the head scores >= 0.1."""
    pytest.importorskip("torch", reason="training needs PyTorch (pip install 'voxserve[export]')")
    import numpy as np

    from voxserve.models import wakeword_train as wt

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 16, 96)).astype(np.float32)
    y = (rng.random(300) < 0.3).astype(np.float32)
    X[y > 0.5] += 0.5                                       # learnable
    W = rng.standard_normal((200, 16, 96)).astype(np.float32) + 0.3
    seen = {}
    real_verifier = wt.train_verifier
    monkeypatch.setattr(wt, "train_verifier", lambda *a, **k: seen.setdefault("v", real_verifier(*a, **k)))
    cfg = wt.TrainConfig("hey test", epochs=2, mine_epochs=1, threads=1, head="conv", verifier=True)
    member, y_used = wt.fit_member(X, y, W, cfg)
    assert len(y_used) > len(y) and y_used[len(y):].sum() == 0       # mined pool windows, as negatives
    assert "v" in seen and set(dict(member.named_children())) == {"head", "verifier"}
    plain, y_plain = wt.fit_member(X, y, None, wt.TrainConfig("hey test", epochs=2, threads=1))
    assert len(y_plain) == len(y) and not hasattr(plain, "verifier")


def test_operating_point_is_the_fewest_misses_within_the_false_accept_target():
    import numpy as np

    from voxserve.models.wakeword_eval import operating_point

    pos = np.array([0.95, 0.9, 0.8, 0.7, 0.3])                 # best scores of five positives
    noise = np.zeros(200)
    noise[[10, 100]] = [0.75, 0.65]                              # two isolated false peaks in one stream
    op = operating_point(pos, [noise], hours=1.0, max_fa_per_hour=1.0)
    assert op["threshold"] == 0.7 and op["false_accepts"] == 1 and op["frr"] == 0.2    # ties: the highest
    op = operating_point(pos, [noise], hours=1.0, max_fa_per_hour=0.0)
    assert op["threshold"] == 0.8 and op["frr"] == 0.4 and op["false_accepts"] == 0
    assert operating_point(pos, [np.ones(200)], hours=1.0, max_fa_per_hour=0.0) is None
    near_one = np.array([0.999, 0.998, 0.996, 0.99])            # positives and a false peak just under 1
    op = operating_point(near_one, [np.where(np.arange(200) == 50, 0.995, 0.0)], hours=1.0, max_fa_per_hour=0.0)
    assert op["threshold"] == 0.996 and op["frr"] == 0.25 and op["false_accepts"] == 0
