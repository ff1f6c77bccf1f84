"""deploy/kubernetes/: every manifest validates offline against a pinned Kubernetes version
(kubernetes-validate's bundled OpenAPI schemas, strict: unknown fields are errors), and the Deployment's
args, ports and probes agree with the server's real flags, health services and drain, so they cannot drift."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from server.__main__ import parse_settings
from server.app import SYNTHESIZER_SERVICE

# Pinned: the schemas of Kubernetes 1.30 (gRPC probes are GA since 1.27); kubernetes-validate is pinned too.
KUBERNETES_VERSION = "1.30.0"
MANIFESTS = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def _documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(MANIFESTS.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kind(kind: str, name: str = "speakstream") -> dict:
    [doc] = [d for _, d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name, doc", _documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_manifest_validates_against_the_pinned_kubernetes(name, doc):
    _validate(doc)


def test_the_manifests_are_the_expected_set():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for _, d in _documents())
    assert kinds == [("Deployment", "speakstream"), ("HorizontalPodAutoscaler", "speakstream"),
                     ("Ingress", "speakstream"), ("PodDisruptionBudget", "speakstream"),
                     ("Service", "speakstream"), ("Service", "speakstream-headless")]


@pytest.mark.parametrize("break_it, complaint", [
    (lambda c: c["ports"][0].update(containerPort="grpc"), "is not of type 'integer'"),
    (lambda c: c["readinessProbe"]["grpc"].update(service_name="x"), "Additional properties are not allowed"),
    (lambda c: c.pop("image") and c.pop("name"), "'name' is a required property"),
])
def test_a_broken_manifest_fails_validation(break_it, complaint):
    deployment = copy.deepcopy(_kind("Deployment"))
    break_it(deployment["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(kubernetes_validate.ValidationError) as refused:
        _validate(deployment)
    assert complaint in refused.value.message


def _container() -> dict:
    [container] = _kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_deployments_args_are_the_servers_flags_in_range():
    settings = parse_settings(_container()["args"])  # an unknown flag or a bad value exits (SystemExit)
    assert settings.host == "0.0.0.0"
    cpu = float(_container()["resources"]["requests"]["cpu"])
    assert settings.pool_size * settings.intra_op_threads == cpu  # ORT sizes itself to the node otherwise


def test_ports_and_probes_are_the_servers():
    container, settings = _container(), parse_settings(_container()["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.port, "metrics": settings.metrics_port}
    probes = {kind: container[kind]["grpc"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {probe["port"] for probe in probes.values()} == {settings.port}
    # Readiness follows the Synthesizer's health, which turns NOT_SERVING when a drain starts.
    assert probes["readinessProbe"]["service"] == SYNTHESIZER_SERVICE
    assert "service" not in probes["livenessProbe"]  # "": the server as a whole
    annotations = _kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port


def test_the_grace_period_outlasts_prestop_and_the_drain():
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    settings = parse_settings(_container()["args"])
    command = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + settings.grace_s


def test_services_pdb_hpa_and_ingress_point_at_the_deployment():
    deployment = _kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in _container()["ports"]}
    headless, regular = _kind("Service", "speakstream-headless"), _kind("Service")
    assert headless["spec"]["clusterIP"] == "None" and regular["spec"]["type"] == "ClusterIP"
    for service in (headless, regular):
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert _kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _kind("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "speakstream"}
    assert hpa["minReplicas"] > _kind("PodDisruptionBudget")["spec"]["maxUnavailable"]
    [backend] = [p["backend"]["service"] for r in _kind("Ingress")["spec"]["rules"] for p in r["http"]["paths"]]
    assert backend["name"] == regular["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in regular["spec"]["ports"]}
