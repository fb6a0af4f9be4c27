"""The Helm chart, rendered and linted offline with helm-python-sdk (Helm's Go library via ctypes:
the equivalent of `helm template` and `helm lint`, no cluster, no helm binary).

Every manifest of the default rendering and of each ci/*-values.yaml is validated strictly
against the Kubernetes OpenAPI schemas (kubernetes-validate); the CRD kinds it has no schema for
(ServiceMonitor, PrometheusRule, ScaledObject) get a structural check of their own here. Then the
facts the chart promises: grace > drain, the TPS division, KEDA xor HPA, no inline secrets,
locked-down pods, and the monitoring files identical to deploy/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
import yaml
from helm_python.errors import HelmValuesError

from service.environment import environment_variables
from service.settings import LocalModel, LocalModelSettings, Settings

helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk is not installed (pip install helm-python-sdk==0.2.2)"
)
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed"
)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "image-moderation"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "mod"
NAMESPACE = "moderation"
FULLNAME = f"{RELEASE}-image-moderation"
# The oldest version Chart.yaml's kubeVersion admits, and the newest the validator knows.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
# Custom resources kubernetes-validate has no schema for: checked structurally below instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
COMPONENTS = {"pipeline": "run", "sink": "sink", "console": "console"}
# Variables the service reads that the ConfigMap deliberately leaves out, and why.
NOT_IN_CONFIGMAP = {
    "KAFKA_SASL_PASSWORD": "from an existing Secret (secretKeyRef), never inline",
    "KAFKA_SASL_USERNAME": "plain value or from a Secret (secretKeyRef)",
    "AWS_DEFAULT_REGION": "alias of AWS_REGION, which the chart sets",
    "MODERATION_HTTP_HOST": "the default 0.0.0.0 is right in a pod (probes come from the node)",
    "MODERATION_ACTIVATION_CONDITIONS": "the chart mounts a file (…_CONDITIONS_FILE) instead",
    "MODERATION_REVIEW_LOCAL_STORE": "local runs without A2I only",
    "SINK_PRODUCER_MAX_BATCH_SIZE": "a test knob for the embedded broker",
    "MODERATION_LOCAL_MODEL_PATHS": "other model files need a custom image; set it via extraEnv",
    "KAFKA_GROUP_INSTANCE_ID": "set per pod from its name (kafka.staticMembership), not shared",
    "MODERATION_SINK_DATA_DIR": "the default, /tmp/moderation-sink, is on the pod's /tmp emptyDir",
}


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    return [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def ci_values(path: Path | None) -> dict[str, Any] | None:
    return yaml.safe_load(path.read_text()) if path else None


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def env_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    return find(docs, "ConfigMap", f"{FULLNAME}-env")["data"]


def deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in docs
        if d["kind"] == "Deployment"
    }


VALUE_SETS = [None, *CI_VALUES]
VALUE_IDS = ["defaults", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]


def test_there_is_a_ci_values_file_per_feature() -> None:
    assert {p.name for p in CI_VALUES} >= {
        f"{feature}-values.yaml"
        for feature in ("keda", "hpa", "console", "servicemonitor", "networkpolicy", "all-features")
    }


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_IDS)
def test_lint_is_clean(values_file: Path | None) -> None:
    report = helm.lint(CHART, ci_values(values_file), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert not report["errors"], report
    assert not problems, problems


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_IDS)
def test_every_manifest_is_valid(chart: Any, values_file: Path | None) -> None:
    docs = render(chart, ci_values(values_file))
    assert {"Deployment", "ConfigMap", "Service", "ServiceAccount"} <= set(kinds(docs))
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"].get("namespace") == NAMESPACE, where
        if doc["kind"] in CRD_KINDS:
            continue  # no OpenAPI schema in kubernetes-validate: see the structural tests
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} invalid for Kubernetes {version}: {exc}")
    check_custom_resources(docs)


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_IDS)
def test_pods_drain_before_the_kill_and_are_locked_down(
    chart: Any, values_file: Path | None
) -> None:
    docs = render(chart, ci_values(values_file))
    drain = float(env_data(docs)["MODERATION_SHUTDOWN_GRACE_S"])
    for component, deployment in deployments(docs).items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > drain, component
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == FULLNAME
        (container,) = pod["containers"]
        assert container["args"] == [COMPONENTS[component]]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"metrics": int(env_data(docs)["MODERATION_HTTP_PORT"])}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert {"name": "work", "mountPath": "/app"} in container["volumeMounts"]  # WORKDIR


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_IDS)
def test_secrets_are_only_referenced(chart: Any, values_file: Path | None) -> None:
    docs = render(chart, ci_values(values_file))
    assert "Secret" not in kinds(docs)
    for name in env_data(docs):
        assert "PASSWORD" not in name, name
        assert "SECRET" not in name, name
    for deployment in deployments(docs).values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        for var in container.get("env", []):
            if var["name"].startswith("KAFKA_SASL"):
                assert set(var) == {"name", "valueFrom"}, var
                assert "secretKeyRef" in var["valueFrom"]


@pytest.mark.parametrize("static", [True, False])
def test_the_pipeline_is_a_static_member_named_after_its_pod(chart: Any, static: bool) -> None:
    docs = render(chart, {"kafka": {"staticMembership": static}})
    for component, deployment in deployments(docs).items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        found = [v for v in container.get("env", []) if v["name"] == "KAFKA_GROUP_INSTANCE_ID"]
        if static and component == "pipeline":
            assert found == [
                {
                    "name": "KAFKA_GROUP_INSTANCE_ID",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                }
            ]
        else:  # the sink and the console keep dynamic membership; so does everything when off
            assert found == [], component


def check_custom_resources(docs: list[dict[str, Any]]) -> None:
    """What the CRDs' own validation would catch first, plus the links between objects."""
    service = find(docs, "Service", f"{FULLNAME}-metrics")
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "ServiceMonitor":
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            selector = spec["selector"]["matchLabels"]
            assert selector.items() <= service["metadata"]["labels"].items()
            port_names = {p["name"] for p in service["spec"]["ports"]}
            for endpoint in spec["endpoints"]:
                assert endpoint["port"] in port_names
                assert endpoint["path"] == "/metrics"
                assert re.fullmatch(r"\d+(ms|s|m)", endpoint["interval"])
                # The alert rules and the dashboard select on this job name.
                assert {
                    "action": "replace",
                    "targetLabel": "job",
                    "replacement": "image-moderation",
                } in endpoint["relabelings"]
        elif doc["kind"] == "PrometheusRule":
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert set(spec) == {"groups"}
            for group in spec["groups"]:
                assert group["name"]
                assert group["rules"]
                for rule in group["rules"]:
                    assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
                    assert ("alert" in rule) != ("record" in rule)
                    assert isinstance(rule["expr"], str)
                    assert rule["expr"].strip()
        elif doc["kind"] == "ScaledObject":
            assert doc["apiVersion"] == "keda.sh/v1alpha1"
            target = spec["scaleTargetRef"]
            assert target["name"] == f"{FULLNAME}-pipeline"
            assert target.get("kind", "Deployment") == "Deployment"
            assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
            (trigger,) = spec["triggers"]
            assert trigger["type"] == "kafka"
            metadata = trigger["metadata"]
            assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= set(metadata)
            # KEDA's trigger metadata is map[string]string: numbers must be quoted.
            assert all(isinstance(v, str) for v in metadata.values()), metadata
            assert int(metadata["lagThreshold"]) > 0


# --- the TPS quota -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected_tps", "divisor"),
    [
        (None, "2.500", 2),  # 5 TPS over the default 2 replicas
        ({"rekognition": {"accountTps": 10}, "pipeline": {"replicas": 3}}, "3.333", 3),
        (
            {"rekognition": {"accountTps": 50}, "autoscaling": {"keda": {"enabled": True}}},
            "8.333",
            6,
        ),
        (
            {
                "rekognition": {"accountTps": 50},
                "autoscaling": {"hpa": {"enabled": True, "maxReplicas": 5}},
            },
            "10.000",
            5,
        ),
    ],
    ids=["defaults", "rounded-down", "keda-max", "hpa-max"],
)
def test_each_replica_gets_its_share_of_the_account_quota(
    chart: Any, values: dict[str, Any] | None, expected_tps: str, divisor: int
) -> None:
    docs = render(chart, values)
    tps = env_data(docs)["MODERATION_TPS"]
    assert tps == expected_tps
    account = float(((values or {}).get("rekognition") or {}).get("accountTps", 5))
    assert float(tps) * divisor <= account  # never above the quota, whatever the rounding
    pipeline = deployments(docs)["pipeline"]
    autoscaled = any(
        (values or {}).get("autoscaling", {}).get(kind, {}).get("enabled")
        for kind in ("keda", "hpa")
    )
    # An autoscaler owns the replica count: the Deployment must not fight it on every upgrade.
    assert ("replicas" in pipeline["spec"]) is not autoscaled


def test_a_share_below_what_the_service_accepts_fails_the_render(chart: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"at least 0\.1"):
        render(chart, {"rekognition": {"accountTps": 1}, "pipeline": {"replicas": 20}})


# --- refusals ----------------------------------------------------------------------------------


def test_keda_and_hpa_together_fail_the_render(chart: Any) -> None:
    both = {"autoscaling": {"keda": {"enabled": True}, "hpa": {"enabled": True}}}
    with pytest.raises(helm.HelmRenderError, match="mutually exclusive"):
        render(chart, both)


@pytest.mark.parametrize("component", ["pipeline", "sink", "console"])
def test_grace_not_above_drain_fails_the_render(chart: Any, component: str) -> None:
    values: dict[str, Any] = {
        "moderation": {"shutdownGraceSeconds": 40},
        component: {"terminationGracePeriodSeconds": 40, "enabled": True},
    }
    if component == "pipeline":
        del values[component]["enabled"]
    for other in {"pipeline", "sink", "console"} - {component}:
        values.setdefault(other, {})["terminationGracePeriodSeconds"] = 60
    with pytest.raises(helm.HelmRenderError, match=rf"{component}\.terminationGracePeriodSeconds"):
        render(chart, values)


@pytest.mark.parametrize(
    "values",
    [
        {"bogus": 1},
        {"pipeline": {"replica": 3}},  # typo of replicas
        {"kafka": {"topics": {"inputs": "x"}}},
        {"autoscaling": {"keda": {"lagThreshhold": 10}}},
        {"rekognition": {"accountTps": 0}},
        {"kafka": {"securityProtocol": "SASL"}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"serviceAccount": {"awsRoleArn": "my-role"}},
    ],
    ids=lambda v: orjson.dumps(v).decode(),
)
def test_schema_refuses_unknown_or_wrong_values(chart: Any, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


def test_sasl_needs_an_existing_password_secret(chart: Any) -> None:
    sasl = {"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "SCRAM-SHA-512"}}}
    with pytest.raises(helm.HelmRenderError, match="passwordSecret"):
        render(chart, sasl)
    sasl["kafka"]["sasl"]["passwordSecret"] = {"name": "kafka-credentials", "key": "password"}
    (container,) = deployments(render(chart, sasl))["pipeline"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert {
        "name": "KAFKA_SASL_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "kafka-credentials", "key": "password"}},
    } in container["env"]


# --- what each feature renders -----------------------------------------------------------------


def test_defaults_render_pipeline_and_sink_without_optional_objects(chart: Any) -> None:
    docs = render(chart)
    assert set(deployments(docs)) == {"pipeline", "sink"}
    assert deployments(docs)["pipeline"]["spec"]["replicas"] == 2
    assert deployments(docs)["pipeline"]["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    for absent in ("ScaledObject", "HorizontalPodAutoscaler", "NetworkPolicy", *CRD_KINDS):
        assert absent not in kinds(docs)
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"} == {
        f"{FULLNAME}-pipeline",
        f"{FULLNAME}-sink",
    }


def test_all_features_render_everything(chart: Any) -> None:
    docs = render(chart, ci_values(CHART / "ci" / "all-features-values.yaml"))
    assert set(deployments(docs)) == {"pipeline", "sink", "console"}
    for kind in ("ScaledObject", "NetworkPolicy", "ServiceMonitor", "PrometheusRule"):
        assert kind in kinds(docs)
    account = find(docs, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (
        "arn:aws:iam::123456789012:role/image-moderation"
    )
    files = find(docs, "ConfigMap", f"{FULLNAME}-files")["data"]
    assert yaml.safe_load(files["policy.yaml"])["labels"]["Explicit"] == {
        "reject": 60,
        "review": 30,
    }
    assert orjson.loads(files["activation-conditions.json"])["Conditions"]
    env = env_data(docs)
    assert env["MODERATION_POLICY_FILE"] == "/etc/moderation/policy.yaml"
    assert env["MODERATION_ACTIVATION_CONDITIONS_FILE"] == (
        "/etc/moderation/activation-conditions.json"
    )
    assert env["MODERATION_TPS"] == "10.000"  # 100 TPS over KEDA's 10 replicas at most


def test_configmap_sets_every_variable_the_service_reads(chart: Any) -> None:
    """Both ways: nothing the chart sets is unknown to the service (a typo would be ignored
    silently), and every setting is configurable or deliberately left out (NOT_IN_CONFIGMAP)."""
    read = set(environment_variables(Settings))  # from the settings models themselves
    assert "KAFKA_BOOTSTRAP_SERVERS" in read
    assert "MODERATION_TPS" in read
    # Rekognition and the local model are alternatives: between them the CI values set all.
    env = env_data(render(chart, ci_values(CHART / "ci" / "all-features-values.yaml")))
    env |= env_data(render(chart, ci_values(CHART / "ci" / "local-backend-values.yaml")))
    assert set(env) <= read, f"the chart sets variables the service ignores: {set(env) - read}"
    missing = read - set(env) - set(NOT_IN_CONFIGMAP)
    assert not missing, (
        f"service.settings.Settings reads {sorted(missing)}: add chart values for them "
        "(values.yaml, values.schema.json, templates/configmap.yaml) or list them in "
        "NOT_IN_CONFIGMAP with the reason"
    )


def test_keda_scales_the_pipeline_on_its_consumer_group_lag(chart: Any) -> None:
    docs = render(chart, ci_values(CHART / "ci" / "keda-values.yaml"))
    scaled = find(docs, "ScaledObject")
    env = env_data(docs)
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    assert metadata["bootstrapServers"] == env["KAFKA_BOOTSTRAP_SERVERS"]
    assert metadata["consumerGroup"] == env["MODERATION_GROUP_ID"]
    assert metadata["topic"] == env["MODERATION_INPUT_TOPIC"]
    assert metadata["lagThreshold"] == "200"
    assert scaled["spec"]["triggers"][0]["authenticationRef"] == {"name": "kafka-keda-auth"}
    assert scaled["spec"]["maxReplicaCount"] == 8
    assert env["MODERATION_TPS"] == "6.250"  # 50 / 8


def test_hpa_targets_the_pipeline(chart: Any) -> None:
    hpa = find(
        render(chart, ci_values(CHART / "ci" / "hpa-values.yaml")), "HorizontalPodAutoscaler"
    )
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{FULLNAME}-pipeline"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)


def test_console_gets_its_deployment_and_service(chart: Any) -> None:
    docs = render(chart, ci_values(CHART / "ci" / "console-values.yaml"))
    console = deployments(docs)["console"]
    assert console["spec"]["replicas"] == 2
    service = find(docs, "Service", f"{FULLNAME}-console")
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "console"
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_network_policy_allows_only_dns_kafka_https_and_metrics(chart: Any) -> None:
    policy = find(
        render(chart, ci_values(CHART / "ci" / "networkpolicy-values.yaml")), "NetworkPolicy"
    )
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    egress_ports = [
        (port["port"], port["protocol"]) for rule in spec["egress"] for port in rule["ports"]
    ]
    assert sorted(egress_ports, key=str) == sorted(
        [(53, "UDP"), (53, "TCP"), (9094, "TCP"), (9096, "TCP"), (443, "TCP"), (80, "TCP")],
        key=str,
    )
    https = spec["egress"][2]["to"][0]["ipBlock"]
    assert https["cidr"] == "0.0.0.0/0"
    assert "169.254.0.0/16" in https["except"]  # never the instance metadata service


# --- monitoring files: one source of truth -----------------------------------------------------


def test_chart_copies_of_monitoring_files_are_identical() -> None:
    pairs = {
        CHART / "files" / "alerts.yaml": REPO / "deploy" / "prometheus" / "alerts.yaml",
        CHART / "files" / "moderation-dashboard.json": REPO
        / "deploy"
        / "grafana"
        / "moderation-dashboard.json",
    }
    for copy, source in pairs.items():
        assert copy.read_bytes() == source.read_bytes(), (
            f"{copy.relative_to(REPO)} differs from {source.relative_to(REPO)}: cp {source} {copy}"
        )


def test_prometheus_rule_and_dashboard_configmap_carry_the_files(chart: Any) -> None:
    docs = render(chart, ci_values(CHART / "ci" / "servicemonitor-values.yaml"))
    rule = find(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((REPO / "deploy/prometheus/alerts.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboard = find(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Moderation"}
    (content,) = dashboard["data"].values()
    assert orjson.loads(content) == orjson.loads(
        (REPO / "deploy/grafana/moderation-dashboard.json").read_bytes()
    )
    monitor = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"


def test_validator_really_rejects_a_bad_manifest(chart: Any) -> None:
    """Guards the guard: a typo in a Deployment must not pass strict validation."""
    pipeline = deployments(render(chart))["pipeline"]
    pipeline["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pipeline, KUBE_VERSIONS[-1], strict=True)


def test_schema_covers_every_value() -> None:
    """Each key of values.yaml is typed in values.schema.json (free-form maps excepted), and each
    documented: a `# --` comment precedes it."""
    schema = orjson.loads((CHART / "values.schema.json").read_bytes())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if not isinstance(value, dict) or node.get("type") != "object":
            return
        properties = node.get("properties")
        if properties is None:
            return  # a free-form object (resources, affinity, policy documents...)
        assert node.get("additionalProperties") is False, f"{path or '.'} allows unknown keys"
        for key, child in value.items():
            assert key in properties, f"{path}.{key} is not in values.schema.json"
            walk(child, properties[key], f"{path}.{key}")

    walk(values, schema, "")
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w]*):(?:\s+\S.*)?$", line)
        has_children = i + 1 < len(lines) and lines[i + 1].startswith(
            (match[1] if match else "") + "  "
        )
        if match and not has_children:  # a leaf value: documented just above
            above = [text.strip() for text in lines[max(0, i - 8) : i]]
            assert any(text.startswith("# --") for text in above), f"undocumented: {line}"


def test_the_local_backend_gets_its_own_settings_and_no_quota_split(chart: Any) -> None:
    env = env_data(render(chart, {"backend": "local", "localModel": {"tps": 120, "workers": 4}}))
    assert env["MODERATION_BACKEND"] == "local"
    assert env["MODERATION_TPS"] == "120"
    assert env["MODERATION_LOCAL_WORKERS"] == "4"
    assert env["MODERATION_LOCAL_MODELS"] == ",".join(LocalModelSettings().models)
    assert "REKOGNITION_ENDPOINT_URL" not in env
    with pytest.raises(HelmValuesError, match="localModel"):
        render(chart, {"localModel": {"models": ["clip"]}})


def test_the_chart_offers_every_local_model_the_service_knows(chart: Any) -> None:
    every = list(get_args(LocalModel))
    env = env_data(render(chart, {"backend": "local", "localModel": {"models": every}}))
    assert env["MODERATION_LOCAL_MODELS"] == ",".join(every)
