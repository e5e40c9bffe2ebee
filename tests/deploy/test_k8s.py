"""Kubernetes manifests: every overlay renders, validates, and agrees with the server's settings."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from server.app import GATEWAY
from server.settings import Settings, load_settings
from tests.deploy.conftest import OVERLAYS, find

# Oldest and newest Kubernetes the manifests are checked against (native gRPC
# probes are GA since 1.27; kubernetes-validate 1.37.0 knows up to 1.37).
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
SCHEMAS = Path(__file__).parent / "schemas"
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrule_v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobject_v1alpha1.json",
}
KINDS = {
    "gpu": {"HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"},
    "gpu-keda": {"ScaledObject", "ServiceMonitor", "PrometheusRule"},
    "cpu-dev": set(),
}
COMMON = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Secret",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "NetworkPolicy",
}


def strict(schema: Any) -> Any:
    """Forbid unknown fields wherever a CRD schema lists its properties (as the API server's
    strict field validation does)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def validate_custom(obj: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / CUSTOM[(obj["apiVersion"], obj["kind"])]).read_text())
    jsonschema.Draft202012Validator(strict(schema)).validate(obj)


def gateway(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Deployment", "cocktail-gateway")


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = gateway(objects)["spec"]["template"]["spec"]["containers"]
    return c


def settings_of(objects: list[dict[str, Any]], tmp_path: Path) -> Settings:
    config = tmp_path / "cocktail.yaml"
    config.write_text(find(objects, "ConfigMap", "cocktail-config")["data"]["cocktail.yaml"])
    return load_settings(config)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    kinds = {o["kind"] for o in rendered[overlay]}
    assert kinds == COMMON | KINDS[overlay]
    assert {
        o["metadata"].get("namespace") for o in rendered[overlay] if o["kind"] != "Namespace"
    } == {"cocktail"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_objects_validate(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, version: str
) -> None:
    for obj in rendered[overlay]:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM:
            continue
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("overlay", ["gpu", "gpu-keda"])
def test_custom_resources_validate_against_vendored_crds(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    custom = [o for o in rendered[overlay] if (o["apiVersion"], o["kind"]) in CUSTOM]
    assert {o["kind"] for o in custom} == KINDS[overlay] - {"HorizontalPodAutoscaler"}
    for obj in custom:
        validate_custom(obj)


def test_validators_reject_a_misspelled_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    monitor = copy.deepcopy(find(rendered["gpu"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate_custom(monitor)
    deployment = copy.deepcopy(gateway(rendered["gpu"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_parse_and_match_the_pod(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objects = rendered[overlay]
    s = settings_of(objects, tmp_path)
    c = container(objects)
    pod = gateway(objects)["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": s.port, "admin": s.admin_port, "metrics": s.metrics_port}
    assert {s.host, s.admin_host, s.metrics_host} == {"0.0.0.0"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert Path(mounts["deltas"]["mountPath"]) == s.delta_store
    assert not mounts["deltas"].get("readOnly", False)
    models = Path(mounts["models"]["mountPath"])
    assert mounts["models"]["readOnly"] and s.base_model.is_relative_to(models)
    assert s.allowed_source_roots and all(r.is_relative_to(models) for r in s.allowed_source_roots)
    token = find(objects, "Secret", "cocktail-admin-token")
    assert volumes["admin-token"]["secret"]["secretName"] == token["metadata"]["name"]
    assert s.admin_token_file == Path(mounts["admin-token"]["mountPath"]) / "token"
    assert set(token["data"]) == {"token"}
    assert volumes["config"]["configMap"]["name"].startswith("cocktail-config-")
    assert c["args"] == ["serve", "--config", f"{mounts['config']['mountPath']}/cocktail.yaml"]
    # SIGTERM comes after preStop; the drain must finish inside the grace period.
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + s.drain_seconds + 5
    assert s.store_poll_seconds > 0  # replicas converge on the shared store


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_grpc_health_on_the_gateway_port(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    c = container(rendered[overlay])
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port
    assert c["readinessProbe"]["grpc"]["service"] == GATEWAY
    startup = c["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= (900 if overlay.startswith("gpu") else 300)  # a cold model load


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_hardening(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for deployment in (o for o in rendered[overlay] if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "limits" in c["resources"] and "memory" in c["resources"]["limits"]


@pytest.mark.parametrize("overlay", ["gpu", "gpu-keda"])
def test_gpu_pods_take_one_gpu_and_shared_memory(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objects = rendered[overlay]
    c = container(objects)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert c["image"].endswith("-cuda")
    pod = gateway(objects)["spec"]["template"]["spec"]
    dshm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert dshm["emptyDir"]["medium"] == "Memory"
    assert next(m for m in c["volumeMounts"] if m["name"] == "dshm")["mountPath"] == "/dev/shm"
    s = settings_of(objects, tmp_path)
    assert (s.engine, s.device) == ("vllm", "cuda")
    # Every admissible request fits vLLM's context.
    assert s.limits.max_prompt_tokens + s.limits.max_tokens <= s.vllm["max_model_len"]


def test_cpu_dev_runs_the_torch_engine_without_gpu(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    objects = rendered["cpu-dev"]
    c = container(objects)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["image"].endswith("-cpu")
    assert settings_of(objects, tmp_path).engine == "torch"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_the_right_pods_and_ports(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    pods = {
        d["metadata"]["name"]: d["spec"]["template"] for d in objects if d["kind"] == "Deployment"
    }
    for svc in (o for o in objects if o["kind"] == "Service"):
        (target,) = [
            t
            for t in pods.values()
            if svc["spec"]["selector"].items() <= t["metadata"]["labels"].items()
        ]
        names = {p["name"] for c in target["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names, svc["metadata"]["name"]
    pods_svc = find(objects, "Service", "cocktail-gateway-pods")
    assert pods_svc["spec"]["clusterIP"] == "None"  # one DNS record per replica, for Envoy
    for claim in (o for o in objects if o["kind"] == "PersistentVolumeClaim"):
        expected = ["ReadWriteOnce"] if overlay == "cpu-dev" else ["ReadWriteMany"]
        assert claim["spec"]["accessModes"] == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_admin_port_is_open_to_the_ops_namespace_only(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    policy = find(rendered[overlay], "NetworkPolicy", "cocktail-gateway")
    rules = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert set(rules) == {"grpc", "admin", "metrics"}
    assert rules["admin"] == [{"namespaceSelector": {"matchLabels": {"cocktail.io/ops": "true"}}}]
    assert rules["metrics"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    pdb = find(rendered[overlay], "PodDisruptionBudget", "cocktail-gateway")
    assert (
        pdb["spec"]["selector"]["matchLabels"]
        == gateway(rendered[overlay])["spec"]["selector"]["matchLabels"]
    )


def test_hpa_scales_on_the_adapter_metric(rendered: dict[str, list[dict[str, Any]]]) -> None:
    hpa = find(rendered["gpu"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway(rendered["gpu"])["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    values = yaml.safe_load(
        (Path(__file__).parents[2] / "deploy/k8s/prometheus-adapter/values.yaml").read_text()
    )
    served = {r["name"]["as"] for r in values["rules"]["custom"]}
    assert metric["pods"]["metric"]["name"] in served
    assert hpa["spec"]["minReplicas"] >= 2  # the PodDisruptionBudget lets one go


def test_keda_scales_the_gateway_of_its_namespace(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["gpu-keda"]
    scaled = find(objects, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == gateway(objects)["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    assert f'namespace="{scaled["metadata"]["namespace"]}"' in query
    assert 'job="cocktail-gateway-pods"' in query  # the Service the ServiceMonitor scrapes
    hpa_like = find(rendered["gpu"], "HorizontalPodAutoscaler")
    assert (
        trigger["metadata"]["threshold"]
        == hpa_like["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    )
