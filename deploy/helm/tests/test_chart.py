"""Tests for the herald Helm chart, without a cluster.

The chart is rendered by the real Helm v4 engine (helm-python-sdk, no binary), the
values are checked against values.schema.json by Helm itself, and the rendered
manifests are validated against the Kubernetes 1.30 OpenAPI schemas shipped inside
kubernetes-validate (offline).

    .venv/bin/python -m pytest deploy/helm/tests
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from yamllint import config as yamllint_config
from yamllint import linter as yamllint_linter

HERE = Path(__file__).resolve().parent
CHART_DIR = HERE.parent / "herald"
GOOD = sorted((HERE / "values" / "good").glob("*.yaml"))
BAD = sorted((HERE / "values" / "bad").glob("*.yaml"))
MAXIMAL = HERE / "values" / "good" / "maximal.yaml"
KUBE_VERSION = "1.30.0"
RELEASE = "herald"
NAMESPACE = "mail"

# Kinds kubernetes-validate has no schema for (CRDs); checked by hand below.
CRD_KINDS = {"ServiceMonitor"}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


class Rendered:
    """A rendered release: objects by (kind, name), plus NOTES.txt."""

    def __init__(self, manifests: dict[str, str]):
        self.notes = manifests.get("herald/templates/NOTES.txt", "")
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if not path.endswith(".yaml"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("_template", path)
                    self.objects.append(doc)

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}

    def one(self, kind: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        """Services by name."""
        return {o["metadata"]["name"]: o for o in self.objects if o["kind"] == "Service"}

    def service_with_port(self, port: str) -> dict[str, Any]:
        (found,) = [s for s in self.services.values() if port in {p["name"] for p in s["spec"]["ports"]}]
        return found

    def maybe(self, kind: str) -> dict[str, Any] | None:
        found = [o for o in self.objects if o["kind"] == kind]
        return found[0] if found else None

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod_spec["containers"]
        assert [c["name"] for c in containers] == ["herald"]
        return containers[0]

    @property
    def env(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.container.get("env", [])}

    @property
    def config(self) -> dict[str, Any]:
        return yaml.safe_load(self.one("ConfigMap")["data"]["herald.yaml"])

    @property
    def test_pod(self) -> dict[str, Any]:
        pods = [o for o in self.objects if o["kind"] == "Pod"]
        assert len(pods) == 1
        return pods[0]


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> Rendered:
    return Rendered(chart.render(values or {}, name=RELEASE, namespace=NAMESPACE))


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "_template"}


def schema_leaf_paths(node: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every value the schema declares (free-form objects are one value)."""
    if "properties" not in node:
        return [prefix]
    paths = []
    for key, child in node["properties"].items():
        paths.extend(schema_leaf_paths(child, f"{prefix}.{key}" if prefix else key))
    return paths


def bad_case(path: Path) -> tuple[str, str]:
    head = path.read_text().splitlines()
    stage = next(line.split(":", 1)[1].strip() for line in head if line.startswith("# stage:"))
    expect = next(line.split(":", 1)[1].strip() for line in head if line.startswith("# expect:"))
    return stage, expect


# ------------------------------------------------------------------------- lint, kinds


@pytest.mark.parametrize("values_file", [None, MAXIMAL], ids=["defaults", "maximal"])
def test_chart_lints_clean_in_strict_mode(values_file: Path | None) -> None:
    values = load_values(values_file) if values_file else None
    report = helm.lint(CHART_DIR, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["total_charts_linted"] == 1
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]


def test_defaults_render_the_core_objects_only(chart: helm.Chart) -> None:
    r = render(chart)
    assert r.kinds() == {
        "ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Pod",
    }


def test_maximal_values_render_every_optional_object(chart: helm.Chart) -> None:
    r = render(chart, load_values(MAXIMAL))
    assert r.kinds() == {
        "ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Pod",
        "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy", "ServiceMonitor",
    }
    # existingSecret is used: the chart makes no Secret of its own.
    assert r.maybe("Secret") is None


@pytest.mark.parametrize("values_file", [None, *GOOD], ids=lambda p: p.stem if p else "defaults")
def test_rendered_manifests_match_kubernetes_schemas(chart: helm.Chart, values_file: Path | None) -> None:
    r = render(chart, load_values(values_file) if values_file else {})
    for obj in r.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(strip(obj), KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['_template']}: {obj['kind']} at {list(e.path)}: {e.message}")
        assert obj["metadata"]["namespace"] == NAMESPACE or obj["kind"] in CRD_KINDS


def test_validator_really_rejects_bad_manifests(chart: helm.Chart) -> None:
    """Guards the test above: strict validation does catch an unknown field, and the
    native preStop sleep action is not in the schemas before 1.29."""
    deployment = strip(render(chart).deployment)
    kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="sleep"):
        kubernetes_validate.validate(deployment, "1.28.0", strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_service_monitor_scrapes_the_metrics_port(chart: helm.Chart) -> None:
    r = render(chart, load_values(MAXIMAL))
    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == "monitoring"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "5s"
    service_labels = r.service_with_port("metrics")["metadata"]["labels"]
    for key, value in sm["spec"]["selector"]["matchLabels"].items():
        assert service_labels[key] == value


# ---------------------------------------------------------------- probes, ports, drain


@pytest.mark.parametrize("values_file", [None, MAXIMAL], ids=["defaults", "maximal"])
def test_probes_are_split_between_healthz_and_readyz(chart: helm.Chart, values_file: Path | None) -> None:
    c = render(chart, load_values(values_file) if values_file else {}).container
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # The startup probe, not an initial delay, covers a slow start.
    assert "initialDelaySeconds" not in c["livenessProbe"]
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 60


def test_probes_can_be_switched_off(chart: helm.Chart) -> None:
    c = render(chart, {"startupProbe": {"enabled": False}, "livenessProbe": {"enabled": False}}).container
    assert "startupProbe" not in c and "livenessProbe" not in c
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize(
    "values_file, http, metrics, service_http, service_metrics",
    [(None, 8080, 9090, 8080, 9090), (MAXIMAL, 8081, 9191, 443, 9090)],
    ids=["defaults", "maximal"],
)
def test_client_and_metrics_ports_line_up(
    chart: helm.Chart, values_file: Path | None, http: int, metrics: int, service_http: int, service_metrics: int
) -> None:
    r = render(chart, load_values(values_file) if values_file else {})
    ports = {p["name"]: p["containerPort"] for p in r.container["ports"]}
    assert ports == {"http": http, "metrics": metrics}
    service_ports = {
        p["name"]: p for name in ("http", "metrics") for p in r.service_with_port(name)["spec"]["ports"]
    }
    assert set(service_ports) == {"http", "metrics"}
    assert service_ports["http"]["port"] == service_http
    assert service_ports["metrics"]["port"] == service_metrics
    assert service_ports["http"]["targetPort"] == "http"
    assert service_ports["metrics"]["targetPort"] == "metrics"
    # herald listens where the pod declares its ports, in the file and in the env.
    assert r.config["server"]["listen"] == f"0.0.0.0:{http}"
    assert r.config["server"]["metrics_listen"] == f"0.0.0.0:{metrics}"
    assert r.env["HERALD__SERVER__LISTEN"]["value"] == f"0.0.0.0:{http}"
    assert r.env["HERALD__SERVER__METRICS_LISTEN"]["value"] == f"0.0.0.0:{metrics}"
    assert r.container["args"][:2] == ["--config", "/etc/herald/herald.yaml"]


@pytest.mark.parametrize(
    "pre_stop, drain",
    [(5, 30), (0, 10), (10, 60), (1, 0), (30, 300)],
)
def test_computed_grace_period_covers_pre_stop_and_drain(chart: helm.Chart, pre_stop: int, drain: int) -> None:
    r = render(chart, {"preStopSleepSeconds": pre_stop, "config": {"shutdown": {"drain_seconds": drain}}})
    grace = r.pod_spec["terminationGracePeriodSeconds"]
    assert grace > pre_stop + drain
    assert grace == pre_stop + drain + 5
    assert r.config["shutdown"]["drain_seconds"] == drain
    lifecycle = r.container.get("lifecycle")
    if pre_stop:
        assert lifecycle == {"preStop": {"sleep": {"seconds": pre_stop}}}
    else:
        assert lifecycle is None


def test_default_grace_period(chart: helm.Chart) -> None:
    r = render(chart)
    assert r.container["lifecycle"]["preStop"]["sleep"]["seconds"] == 5
    assert r.config["shutdown"]["drain_seconds"] == 30
    assert r.pod_spec["terminationGracePeriodSeconds"] == 40


def test_explicit_grace_period_is_kept_when_long_enough(chart: helm.Chart) -> None:
    assert render(chart, {"terminationGracePeriodSeconds": 40}).pod_spec["terminationGracePeriodSeconds"] == 40
    assert render(chart, {"terminationGracePeriodSeconds": 600}).pod_spec["terminationGracePeriodSeconds"] == 600


@pytest.mark.parametrize("grace", [1, 20, 35, 39])
def test_too_short_grace_period_fails_rendering_with_the_budget(chart: helm.Chart, grace: int) -> None:
    with pytest.raises(helm.HelmRenderError) as err:
        render(chart, {"terminationGracePeriodSeconds": grace})
    message = str(err.value)
    assert f"terminationGracePeriodSeconds={grace} is too short" in message
    assert "preStopSleepSeconds (5) + config.shutdown.drain_seconds (30) + 5s to exit = 40" in message


def test_grace_period_follows_a_longer_drain_on_upgrade(chart: helm.Chart) -> None:
    """A grace period that was fine becomes an error when the drain grows past it."""
    values = {"terminationGracePeriodSeconds": 60}
    render(chart, values)
    with pytest.raises(helm.HelmRenderError, match="drain_seconds \\(90\\)"):
        render(chart, {**values, "config": {"shutdown": {"drain_seconds": 90}}})


# ------------------------------------------------------------------ config and checksum


def test_config_file_has_production_defaults(chart: helm.Chart) -> None:
    cfg = render(chart).config
    assert cfg["bus"]["kind"] == "nats"
    assert cfg["bus"]["nats"]["urls"] == ["nats://nats.nats.svc:4222"]
    assert cfg["log"] == {"level": "info", "format": "json"}
    assert cfg["server"]["trust_proxy"] is False
    assert cfg["bus"]["retention"] == "24h" and cfg["bus"]["dedup_window"] == "2m"
    assert cfg["limits"]["max_sessions_total"] == 10000


def test_nats_url_list_feeds_bus_urls(chart: helm.Chart) -> None:
    cfg = render(chart, {"nats": {"url": " nats://a:4222 ,tls://b:4333"}}).config
    assert cfg["bus"]["nats"]["urls"] == ["nats://a:4222", "tls://b:4333"]


def test_embedded_demo_credentials_are_switched_off(chart: helm.Chart) -> None:
    """herald's built-in defaults carry demo users and tokens; the chart's file must
    override every one of them, whatever the values say."""
    for values in ({}, load_values(MAXIMAL)):
        auth = render(chart, values).config["auth"]
        assert auth["publish_tokens"] == []
        assert auth["static"]["aliases"] == []
        assert auth["static"]["tokens"] == []
        assert auth["jwt"]["secret"] == ""


@pytest.mark.parametrize(
    "ingress, trust_proxy, expected",
    [(False, None, False), (True, None, True), (True, False, False), (False, True, True)],
)
def test_trust_proxy_follows_the_ingress_unless_set(
    chart: helm.Chart, ingress: bool, trust_proxy: bool | None, expected: bool
) -> None:
    values: dict[str, Any] = {"ingress": {"enabled": ingress}}
    if trust_proxy is not None:
        values["config"] = {"server": {"trust_proxy": trust_proxy}}
    assert render(chart, values).config["server"]["trust_proxy"] is expected


def test_checksum_annotation_rolls_pods_on_config_change(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        return render(chart, values).deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum({})
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum({}) == base
    assert checksum({"config": {"log": {"level": "debug"}}}) != base
    assert checksum({"nats": {"url": "nats://other:4222"}}) != base
    assert checksum({"containerPorts": {"metrics": 9191}}) != base
    # Not a config change: scaling does not restart pods.
    assert checksum({"replicaCount": 5}) == base


# ---------------------------------------------------------------------------- secrets


SENTINELS = {
    "publishTokens": ["sentinel-publish-1", "sentinel-publish-2"],
    "jwtSecret": "sentinel-jwt",
    "natsUser": "sentinel-user",
    "natsPassword": "sentinel-password",
    "natsToken": "sentinel-token",
    "natsNkeySeed": "SUSENTINELSEED",
    "files": {"static-auth.toml": "# sentinel-static-file\n"},
}
SECRET_ENV = {
    "HERALD__AUTH__PUBLISH_TOKENS": "publish-tokens",
    "HERALD__AUTH__JWT__SECRET": "jwt-secret",
    "HERALD__BUS__NATS__USER": "nats-user",
    "HERALD__BUS__NATS__PASSWORD": "nats-password",
    "HERALD__BUS__NATS__TOKEN": "nats-token",
    "HERALD__BUS__NATS__NKEY_SEED": "nats-nkey-seed",
}


def test_chart_made_secret_holds_secrets_and_the_configmap_none(chart: helm.Chart) -> None:
    r = render(chart, {"secrets": SENTINELS})
    secret = r.one("Secret")
    assert secret["metadata"]["name"] == "herald"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["publish-tokens"] == "sentinel-publish-1,sentinel-publish-2"
    assert data["jwt-secret"] == "sentinel-jwt"
    assert data["nats-password"] == "sentinel-password"
    assert data["static-auth.toml"] == "# sentinel-static-file\n"
    # Nothing secret anywhere but in the Secret.
    everything_else = json.dumps([o for o in r.objects if o["kind"] != "Secret"]) + r.notes
    for needle in ("sentinel", "SUSENTINELSEED"):
        assert needle not in everything_else
    # Referenced, not copied; the pod restarts when the chart-made Secret changes.
    for var, key in SECRET_ENV.items():
        ref = r.env[var]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "herald", "key": key, "optional": True}
        assert "value" not in r.env[var]
    annotations = r.deployment["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/secret"])


def test_existing_secret_is_referenced_and_mounted(chart: helm.Chart) -> None:
    r = render(chart, load_values(MAXIMAL))
    for var, key in SECRET_ENV.items():
        assert r.env[var]["valueFrom"]["secretKeyRef"] == {"name": "herald-secrets", "key": key, "optional": True}
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "herald-secrets"
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    assert mounts["secrets"] == {"name": "secrets", "mountPath": "/etc/herald/secrets", "readOnly": True}
    # The static auth file and NATS creds the config names live in that mount.
    assert r.config["auth"]["static"]["file"].startswith("/etc/herald/secrets/")
    assert r.config["bus"]["nats"]["creds_file"].startswith("/etc/herald/secrets/")
    # envSecret entries come through as secretKeyRefs too.
    assert r.env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"] == {"name": "otlp-auth", "key": "headers"}
    assert r.env["HERALD__FORWARDEMAIL__AUTH_BACKEND_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "checksum/secret" not in r.deployment["spec"]["template"]["metadata"]["annotations"]


def test_existing_secret_wins_over_secret_values(chart: helm.Chart) -> None:
    r = render(chart, {"existingSecret": "mine", "secrets": SENTINELS})
    assert r.maybe("Secret") is None
    assert r.env["HERALD__AUTH__JWT__SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "mine"


def test_no_secret_at_all_means_no_references_and_a_warning(chart: helm.Chart) -> None:
    r = render(chart)
    assert not set(SECRET_ENV) & set(r.env)
    assert "secrets" not in {v["name"] for v in r.pod_spec["volumes"]}
    assert "WARNING: no existingSecret" in r.notes


@pytest.mark.parametrize(
    "config, key",
    [
        ({"auth": {"publish_tokens": ["t"]}}, "config.auth.publish_tokens"),
        ({"auth": {"jwt": {"secret": "s"}}}, "config.auth.jwt.secret"),
        ({"bus": {"nats": {"password": "p"}}}, "config.bus.nats.password"),
        ({"bus": {"nats": {"token": "t"}}}, "config.bus.nats.token"),
        ({"bus": {"nats": {"nkey_seed": "SU"}}}, "config.bus.nats.nkey_seed"),
        ({"auth": {"static": {"aliases": [{"alias": "a", "id": "1", "password_hash": "h"}]}}}, "config.auth.static.aliases"),
    ],
)
def test_secrets_in_config_are_refused(chart: helm.Chart, config: dict[str, Any], key: str) -> None:
    with pytest.raises(helm.HelmRenderError) as err:
        render(chart, {"config": config})
    assert f"{key}" in str(err.value)
    assert "would be written into a ConfigMap" in str(err.value)


# ------------------------------------------------------------------ labels, selectors


@pytest.mark.parametrize("values_file", [None, *GOOD], ids=lambda p: p.stem if p else "defaults")
def test_labels_and_selectors_are_consistent(chart: helm.Chart, values_file: Path | None) -> None:
    r = render(chart, load_values(values_file) if values_file else {})
    deployment = r.deployment
    name = deployment["metadata"]["name"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()

    service = r.service_with_port("http")
    assert service["metadata"]["name"] == name
    for other in r.services.values():
        assert other["spec"]["selector"] == selector

    for obj in r.objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "herald-0.1.0"

    if pdb := r.maybe("PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"] == selector
    if np := r.maybe("NetworkPolicy"):
        assert np["spec"]["podSelector"]["matchLabels"] == selector
    if hpa := r.maybe("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    if ingress := r.maybe("Ingress"):
        service_ports = {p["name"] for p in service["spec"]["ports"]}
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == name
                assert path["backend"]["service"]["port"]["name"] in service_ports
    for constraint in r.pod_spec.get("topologySpreadConstraints", []):
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]
    sa = r.pod_spec["serviceAccountName"]
    if sa_obj := r.maybe("ServiceAccount"):
        assert sa_obj["metadata"]["name"] == sa
    config_volume = next(v for v in r.pod_spec["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == r.one("ConfigMap")["metadata"]["name"]

    # The test pod must never look like a herald pod (Service, PDB, NetworkPolicy).
    test_labels = r.test_pod["metadata"]["labels"]
    assert not selector.items() <= test_labels.items()


def test_release_name_containing_herald_is_not_repeated(chart: helm.Chart) -> None:
    r = Rendered(chart.render({}, name="herald-prod", namespace=NAMESPACE))
    assert r.deployment["metadata"]["name"] == "herald-prod"
    r = Rendered(chart.render({}, name="push", namespace=NAMESPACE))
    assert r.deployment["metadata"]["name"] == "push-herald"


# ------------------------------------------------------------------- pod hardening


@pytest.mark.parametrize("values_file", [None, MAXIMAL], ids=["defaults", "maximal"])
def test_pod_runs_non_root_read_only_without_capabilities(chart: helm.Chart, values_file: Path | None) -> None:
    r = render(chart, load_values(values_file) if values_file else {})
    pod = r.pod_spec
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = r.container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # A read-only root still gets a small writable /tmp.
    mounts = {m["mountPath"] for m in r.container["volumeMounts"]}
    assert {"/etc/herald", "/tmp"} <= mounts
    resources = r.container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_pdb_is_on_by_default_with_max_unavailable_one(chart: helm.Chart) -> None:
    pdb = render(chart).one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert render(chart, {"podDisruptionBudget": {"enabled": False}}).maybe("PodDisruptionBudget") is None


def test_rolling_update_keeps_capacity(chart: helm.Chart) -> None:
    strategy = render(chart).deployment["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


# -------------------------------------------------------------------- scaling, network


def test_autoscaling_replaces_replicas_and_scales_on_sessions(chart: helm.Chart) -> None:
    r = render(chart, load_values(MAXIMAL))
    assert "replicas" not in r.deployment["spec"]
    metrics = r.one("HorizontalPodAutoscaler")["spec"]["metrics"]
    cpu = next(m for m in metrics if m["type"] == "Resource")
    assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    sessions = next(m for m in metrics if m["type"] == "Pods")
    assert sessions["pods"]["metric"]["name"] == "herald_sessions"
    # 70% of config.limits.max_sessions_total (40000 in the maximal file).
    assert sessions["pods"]["target"] == {"type": "AverageValue", "averageValue": "28000"}
    explicit = render(chart, {"autoscaling": {"enabled": True, "sessions": {"enabled": True, "targetAverageValue": "5k"}}})
    target = explicit.one("HorizontalPodAutoscaler")["spec"]["metrics"][1]["pods"]["target"]
    assert target["averageValue"] == "5k"


def test_ingress_gets_websocket_timeouts_for_common_controllers(chart: helm.Chart) -> None:
    ingress = render(chart, {"ingress": {"enabled": True, "className": "nginx"}}).one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert annotations["haproxy.org/timeout-tunnel"] == "3600s"
    assert annotations["haproxy-ingress.github.io/timeout-tunnel"] == "3600s"
    assert annotations["alb.ingress.kubernetes.io/load-balancer-attributes"] == "idle_timeout.timeout_seconds=3600"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    # User annotations win; 0 turns the defaults off.
    maximal = render(chart, load_values(MAXIMAL)).one("Ingress")["metadata"]["annotations"]
    assert maximal["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "86400"
    assert maximal["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "7200"
    traefik = render(chart, load_values(HERE / "values" / "good" / "ingress-traefik.yaml")).one("Ingress")
    assert traefik["metadata"]["annotations"] == {"traefik.ingress.kubernetes.io/router.entrypoints": "websecure"}


def test_network_policy_lets_clients_in_and_nats_otlp_dns_out(chart: helm.Chart) -> None:
    r = render(chart, load_values(MAXIMAL))
    np = r.one("NetworkPolicy")["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    client_rule, metrics_rule = np["ingress"][:2]
    assert client_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    # allowExternal: false -> only labelled clients and the listed peers.
    assert {"podSelector": {"matchLabels": {"herald-push-client": "true"}}} in client_rule["from"]
    assert r.test_pod["metadata"]["labels"]["herald-push-client"] == "true"
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    egress_ports = [sorted(p["port"] for p in rule["ports"]) for rule in np["egress"]]
    assert [53, 53] in egress_ports  # DNS, UDP and TCP
    assert [4222, 4223] in egress_ports  # both NATS URLs
    assert [4317] in egress_ports  # OTLP gRPC
    assert [443] in egress_ports  # extraEgress


def test_network_policy_defaults_admit_any_client(chart: helm.Chart) -> None:
    np = render(chart, {"networkPolicy": {"enabled": True}}).one("NetworkPolicy")["spec"]
    assert "from" not in np["ingress"][0]
    egress_ports = [sorted(p["port"] for p in rule["ports"]) for rule in np["egress"]]
    assert egress_ports == [[53, 53], [4222]]  # no OTLP rule while tracing is off


@pytest.mark.parametrize(
    "endpoint, port",
    [("http://otel-collector.observability.svc:4317", 4317), ("http://collector:4318", 4318),
     ("https://otlp.example.com", 443), ("http://collector", 80)],
)
def test_network_policy_opens_the_otlp_endpoint_port(chart: helm.Chart, endpoint: str, port: int) -> None:
    values = {"networkPolicy": {"enabled": True}, "otel": {"enabled": True, "endpoint": endpoint}}
    egress = render(chart, values).one("NetworkPolicy")["spec"]["egress"]
    assert [[p["port"] for p in rule["ports"]] for rule in egress][-1] == [port]


def test_otel_variables_only_when_enabled(chart: helm.Chart) -> None:
    assert not [k for k in render(chart).env if k.startswith("OTEL_")]
    env = render(chart, load_values(MAXIMAL)).env
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability.svc:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "grpc"
    assert env["OTEL_SERVICE_NAME"]["value"] == "herald"
    assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.05"
    attrs = env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
    assert "k8s.pod.name=$(POD_NAME)" in attrs and "deployment.environment=production" in attrs
    # $(POD_NAME) is only expanded when POD_NAME is defined earlier in the list.
    names = list(env)
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")


# ----------------------------------------------------------------- helm test, NOTES


@pytest.mark.parametrize("service_type", ["ClusterIP", "LoadBalancer", "NodePort"])
def test_metrics_are_never_on_a_public_service(chart: helm.Chart, service_type: str) -> None:
    r = render(chart, {"service": {"type": service_type}})
    client = r.service_with_port("http")
    metrics = r.service_with_port("metrics")
    assert client["spec"]["type"] == service_type
    assert metrics["spec"]["type"] == "ClusterIP"
    if service_type == "ClusterIP":
        assert metrics is client, "one internal Service carries both ports"
    else:
        assert metrics["metadata"]["name"] == f"{client['metadata']['name']}-metrics"
        assert [p["name"] for p in client["spec"]["ports"]] == ["http"]
    script = " ".join(r.test_pod["spec"]["containers"][0]["command"])
    assert f"http://{metrics['metadata']['name']}.{NAMESPACE}.svc:9090" in script
    # herald serves /metrics on its own listener, never on the client port.
    assert r.config["server"]["metrics_listen"] == "0.0.0.0:9090"


def test_helm_test_pod_checks_readyz_through_the_service(chart: helm.Chart) -> None:
    r = render(chart)
    pod = r.test_pod
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    script = " ".join(pod["spec"]["containers"][0]["command"])
    service = r.one("Service")
    assert f"http://{service['metadata']['name']}.{NAMESPACE}.svc:8080" in script
    assert '"$base/readyz"' in script and '"$metrics/metrics"' in script
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_notes_tell_how_to_connect(chart: helm.Chart) -> None:
    notes = render(chart).notes
    for path in ("/v1/ws", "/jmap/ws", "/ws ", "/api/v1/ws/connect", "/v1/publish"):
        assert f"ws://herald.{NAMESPACE}.svc:8080{path}" in notes or f"http://herald.{NAMESPACE}.svc:8080{path}" in notes
    assert "kubectl -n mail port-forward svc/herald 8080:8080" in notes
    assert "terminationGracePeriodSeconds 40s" in notes
    ingress_notes = render(chart, load_values(MAXIMAL)).notes
    assert "wss://push.example.com/v1/ws" in ingress_notes
    assert "WARNING: config.server.allowed_origins" not in ingress_notes


# ----------------------------------------------------------------------------- schema


@pytest.mark.parametrize("values_file", GOOD, ids=lambda p: p.stem)
def test_good_values_files_pass_schema_and_render(chart: helm.Chart, values_file: Path) -> None:
    values = load_values(values_file)
    chart.validate_schema(values)
    render(chart, values)


@pytest.mark.parametrize("values_file", BAD, ids=lambda p: p.stem)
def test_bad_values_files_fail_with_a_clear_message(chart: helm.Chart, values_file: Path) -> None:
    stage, expect = bad_case(values_file)
    values = load_values(values_file)
    if stage == "schema":
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(values)
        assert expect in str(err.value)
    else:
        assert stage == "render"
        chart.validate_schema(values)  # well-typed: only the chart's own rules catch it
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as err:
        render(chart, values)
    assert expect in str(err.value)


def test_schema_declares_every_value() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    problems: list[str] = []

    def walk(value: Any, node: dict[str, Any] | None, path: str) -> None:
        if node is None:
            problems.append(f"{path}: not in the schema")
        elif "type" not in node and "anyOf" not in node:
            problems.append(f"{path}: no type")
        elif isinstance(value, dict) and "properties" in node:
            for key, child in value.items():
                walk(child, node["properties"].get(key), f"{path}.{key}" if path else key)

    walk(values, schema, "")
    assert not problems, problems


def test_schema_rejects_unknown_keys_at_every_chart_owned_level() -> None:
    """Typos fail: every object with declared properties is closed, except the
    Kubernetes objects the chart passes through (they may carry any field)."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    open_objects: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node and node.get("additionalProperties") is not False:
            open_objects.append(path)
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}" if path else key)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    assert sorted(open_objects) == [
        "extraEnv[]", "extraVolumeMounts[]", "extraVolumes[]", "resources", "topologySpreadConstraints[]",
    ]


def test_schema_requires_a_nats_url_only_for_the_nats_bus(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError, match="/nats/url"):
        chart.validate_schema({"nats": {"url": ""}})
    chart.validate_schema({"nats": {"url": ""}, "config": {"bus": {"kind": "memory"}}})


# ------------------------------------------------------------------------ docs, YAML


def test_readme_documents_every_value() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    paths = [p for p in schema_leaf_paths(schema) if p != "global"]
    assert len(paths) > 150
    undocumented = [p for p in paths if f"| `{p}` |" not in readme]
    assert not undocumented, undocumented


def test_readme_keeps_the_required_sections() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    for needle in (
        "helm install nats nats/nats",  # NATS chart beside herald
        "jetstream:",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "loadtest/results/",  # sizing placeholder points at the benchmark
        "existingSecret",
    ):
        assert needle in readme, needle


YAMLLINT = yamllint_config.YamlLintConfig(
    """
extends: default
rules:
  line-length: {max: 120}
  document-start: disable
  truthy: {check-keys: false}
  comments: {min-spaces-from-content: 1}
"""
)


@pytest.mark.parametrize(
    "path",
    [CHART_DIR / "values.yaml", CHART_DIR / "Chart.yaml", *GOOD, *BAD],
    ids=lambda p: str(p.relative_to(HERE.parent)),
)
def test_yaml_files_pass_yamllint(path: Path) -> None:
    problems = list(yamllint_linter.run(path.read_text(), YAMLLINT, str(path)))
    assert not problems, [f"{p.line}:{p.column} {p.desc}" for p in problems]


@pytest.mark.parametrize("values_file", [None, MAXIMAL], ids=["defaults", "maximal"])
def test_rendered_manifests_pass_yamllint(chart: helm.Chart, values_file: Path | None) -> None:
    manifests = chart.render(load_values(values_file) if values_file else {}, name=RELEASE, namespace=NAMESPACE)
    relaxed = yamllint_config.YamlLintConfig(
        "extends: relaxed\nrules: {line-length: {max: 200}, empty-lines: disable, indentation: disable}"
    )
    for path, text in manifests.items():
        if path.endswith(".yaml") and text.strip():
            problems = [p for p in yamllint_linter.run(text, relaxed) if p.level == "error"]
            assert not problems, (path, [f"{p.line}:{p.column} {p.desc}" for p in problems])
