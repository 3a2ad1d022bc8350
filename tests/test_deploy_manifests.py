"""The Kubernetes manifests in deploy/k8s, checked against the Kubernetes API schemas (kubernetes-validate,
offline, strict: unknown fields are errors) and for what voxserve needs of them. No cluster is run here."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is a dev dependency (pip install '.[dev]')")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency")

from .conftest import REPO  # noqa: E402

K8S = REPO / "deploy" / "k8s"
VERSION = "1.33.0"


def docs() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


@pytest.mark.parametrize("path, doc", docs(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_manifest_matches_the_kubernetes_schema(path, doc):
    kv.validate(doc, VERSION, strict=True)


def by_kind(kind: str) -> list[dict]:
    return [d for _, d in docs() if d["kind"] == kind]


def test_deployments_drain_probe_and_run_locked_down():
    from voxserve.server.settings import Settings

    deployments = by_kind("Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {"voxserve", "voxserve-gpu"}
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        [c] = pod["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        known = {"VOXSERVE_" + f.upper() for f in Settings.__dataclass_fields__} | {"VOXSERVE_CACHE"}
        assert set(env) <= known, set(env) - known                       # every variable is a real setting
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + float(env["VOXSERVE_DRAIN_TIMEOUT_S"]) + 5
        assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
        assert env["VOXSERVE_CACHE"] in {m["mountPath"] for m in c["volumeMounts"]}    # writable cache
        assert env["VOXSERVE_HOST"] == "0.0.0.0" and "VOXSERVE_API_KEYS" in env      # beyond loopback: a credential
        assert c["resources"]["requests"]["cpu"]
    gpu = next(d for d in deployments if d["metadata"]["name"] == "voxserve-gpu")
    assert gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_ingress_routes_resumes_by_the_session_key_and_hpa_scales_on_streams():
    from voxserve.server.metrics import Metrics

    [ing] = by_kind("Ingress")
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$arg_session"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    [hpa] = by_kind("HorizontalPodAutoscaler")
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    text = Metrics().render()
    assert f"\n{metric} " in (text.decode() if isinstance(text, bytes) else text)     # exported by /metrics
