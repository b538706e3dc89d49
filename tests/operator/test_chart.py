"""The Helm chart of the operator: it lints, renders valid Kubernetes objects, and grants the
operator exactly the permissions it needs.

`helm` is built from source into e2e/.bin by `make helm` (.ci/run does it when it is missing);
without it the tests that run helm are skipped, saying so. Rendered objects are validated with
the Kubernetes JSON schemas that kubernetes-validate bundles (offline, strict: unknown fields
are errors); the Prometheus Operator's kinds are not among them and are checked field by field.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from planner_scenarios import desired_spec
from test_crd import CRD_PATH, KUBERNETES_VERSION

from taskraft_operator.model import StorageSpec
from taskraft_operator.planner import statefulset_manifest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "taskraft-operator"
HELM = ROOT / "e2e" / ".bin" / "helm"
RELEASE = "taskraft"
RELEASE_NAMESPACE = "taskraft-system"
FULLNAME = "taskraft-taskraft-operator"
# The version Helm renders for and checks kubeVersion against (a helm built without the
# release ldflags would assume 1.20).
HELM_KUBE_VERSION = f"{KUBERNETES_VERSION}.0"

# What the operator may do in each namespace it watches: (API group, resource) -> verbs. The
# handlers (operator/taskraft_operator/handlers.py, "What the operator does through the
# Kubernetes API") must need no more than this, and the chart grants exactly this
# (templates/_helpers.tpl, "taskraft-operator.namespacedRules").
REQUIRED_PERMISSIONS: dict[tuple[str, str], set[str]] = {
    # kopf lists, watches and patches QueueClusters (its annotations); the
    # handlers read the object afresh before planning.
    ("taskraft.io", "queueclusters"): {"get", "list", "watch", "patch"},
    # The handlers write the status the planner returns (a merge patch of the subresource).
    ("taskraft.io", "queueclusters/status"): {"patch"},
    # Owner references with blockOwnerDeletion on the objects below.
    ("taskraft.io", "queueclusters/finalizers"): {"update"},
    # planner.EnsureObject: read, created, then server-side applied (an apply that creates is
    # authorized as create too); ScaleStatefulSet patches replicas. Never deleted: the garbage
    # collector follows the owner references.
    ("apps", "statefulsets"): {"get", "create", "patch"},
    ("", "services"): {"get", "create", "patch"},
    ("", "configmaps"): {"get", "create", "patch"},
    ("policy", "poddisruptionbudgets"): {"get", "create", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch"},
    # Observed by label; planner.DeletePod (with a uid precondition) and planner.DeletePvc.
    ("", "pods"): {"list", "delete"},
    ("", "persistentvolumeclaims"): {"list", "delete"},
    # planner.EnsureObject of the backup Job (applied like the objects above); observed by label.
    ("batch", "jobs"): {"list", "create", "patch"},
    # kopf's and the handlers' events.
    ("", "events"): {"create"},
    # credentials.py: the credentials Secret, generated once, and the TLS Secret, by name.
    ("", "secrets"): {"get", "create"},
}
# Cluster-wide mode only: kopf notices CRDs appearing or changing.
CLUSTER_PERMISSIONS: dict[tuple[str, str], set[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}

MONITORS = [
    "--set",
    "serviceMonitor.enabled=true",
    "--set",
    "podMonitor.enabled=true",
    "--set",
    "nodePodMonitor.enabled=true",
]
NAMESPACED = ["--set", "watchNamespaces={queues,batch}"]
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "namespaced": NAMESPACED,
    "monitors": MONITORS,
    "namespaced-monitors": NAMESPACED + MONITORS,
}

needs_helm = pytest.mark.skipif(
    not HELM.exists(),
    reason=f"{HELM.relative_to(ROOT)} is missing: build it with `make helm` (.ci/run does)",
)


def helm(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *arguments], capture_output=True, text=True, timeout=120, check=False
    )


@cache
def _render(values: tuple[str, ...], include_crds: bool) -> tuple[Mapping[str, Any], ...]:
    arguments = [
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--kube-version",
        HELM_KUBE_VERSION,
        *values,
    ]
    if include_crds:
        arguments.append("--include-crds")
    result = helm(*arguments)
    assert result.returncode == 0, result.stderr
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def render(values: Iterable[str] = (), *, include_crds: bool = False) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(document)) for document in _render(tuple(values), include_crds)]


def objects_of(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [document for document in documents if document["kind"] == kind]


def the(documents: list[dict[str, Any]], kind: str, name: str = FULLNAME) -> dict[str, Any]:
    (found,) = [d for d in objects_of(documents, kind) if d["metadata"]["name"] == name]
    return found


def permissions(rules: list[Mapping[str, Any]]) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for name in rule["resources"]:
                table.setdefault((group, name), set()).update(rule["verbs"])
    return table


def operator_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = the(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


# ---------------------------------------------------------------------------------------------
# Lint and render


@needs_helm
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_chart_lints(values: list[str]) -> None:
    result = helm("lint", str(CHART), "--strict", "--kube-version", HELM_KUBE_VERSION, *values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@needs_helm
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_rendered_object_is_valid(values: list[str]) -> None:
    documents = render(values, include_crds=True)
    for document in documents:
        if document["apiVersion"] == "monitoring.coreos.com/v1":
            check_monitor(document, documents)
        else:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        labels = document["metadata"].get("labels", {})
        if document["kind"] != "CustomResourceDefinition":
            assert labels["app.kubernetes.io/instance"] == RELEASE, document["kind"]
            assert labels["app.kubernetes.io/managed-by"] == "Helm"


def check_monitor(monitor: Mapping[str, Any], documents: list[dict[str, Any]]) -> None:
    """A ServiceMonitor or PodMonitor (monitoring.coreos.com/v1), checked field by field: it
    selects what it means to scrape, through a port that exists."""
    spec = monitor["spec"]
    assert monitor["metadata"]["namespace"] == RELEASE_NAMESPACE
    selector = spec["selector"]["matchLabels"]
    endpoints = spec["endpoints" if monitor["kind"] == "ServiceMonitor" else "podMetricsEndpoints"]
    assert set(spec) <= {
        "namespaceSelector",
        "selector",
        "endpoints",
        "podMetricsEndpoints",
        "podTargetLabels",
    }
    for endpoint in endpoints:
        assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["path"] == "/metrics"
    if monitor["kind"] == "ServiceMonitor":
        assert spec["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
        service = the(documents, "Service", f"{FULLNAME}-metrics")
        assert selector.items() <= service["metadata"]["labels"].items()
        assert [port["name"] for port in service["spec"]["ports"]] == ["metrics"]
        assert service["spec"]["selector"].items() <= pod_labels(documents).items()
    elif monitor["metadata"]["name"] == FULLNAME:
        assert selector.items() <= pod_labels(documents).items()
        ports = [port["name"] for port in operator_container(documents)["ports"]]
        assert endpoints[0]["port"] in ports
    else:
        # The taskraft nodes: the labels and port of the planner's pod template.
        assert monitor["metadata"]["name"] == f"{FULLNAME}-nodes"
        assert selector == {
            "app.kubernetes.io/name": "taskraft",
            "app.kubernetes.io/managed-by": "taskraft-operator",
        }
        assert endpoints[0]["port"] == "http"


def pod_labels(documents: list[dict[str, Any]]) -> dict[str, str]:
    return dict(the(documents, "Deployment")["spec"]["template"]["metadata"]["labels"])


@needs_helm
def test_the_node_pod_monitor_selects_the_pods_the_planner_builds() -> None:
    manifest = statefulset_manifest(desired_spec(), replicas=3, storage=StorageSpec())
    template = manifest["spec"]["template"]
    monitor = the(render(MONITORS), "PodMonitor", f"{FULLNAME}-nodes")
    labels = template["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = template["spec"]["containers"]
    assert "http" in [port["name"] for port in container["ports"]]


@needs_helm
def test_monitors_are_off_by_default() -> None:
    kinds = {document["kind"] for document in render()}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"}
    namespaced = {document["kind"] for document in render(NAMESPACED)}
    assert namespaced == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    }


@needs_helm
def test_the_chart_ships_the_crd_unchanged() -> None:
    assert (CHART / "crds" / CRD_PATH.name).read_bytes() == CRD_PATH.read_bytes()
    (crd,) = objects_of(render(include_crds=True), "CustomResourceDefinition")
    assert crd == yaml.safe_load(CRD_PATH.read_text())


def test_the_chart_ships_the_crd_byte_for_byte() -> None:
    """Also without helm: the copy Helm installs is the file crds/ documents."""
    assert (CHART / "crds" / CRD_PATH.name).read_bytes() == CRD_PATH.read_bytes()
    assert sorted(path.name for path in (CHART / "crds").iterdir()) == [CRD_PATH.name]


# ---------------------------------------------------------------------------------------------
# RBAC


def operator_cluster_role(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return the(documents, "ClusterRole", FULLNAME)


@needs_helm
def test_cluster_wide_mode_grants_exactly_the_required_permissions() -> None:
    documents = render()
    role = operator_cluster_role(documents)
    assert permissions(role["rules"]) == {**REQUIRED_PERMISSIONS, **CLUSTER_PERMISSIONS}
    binding = the(documents, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": FULLNAME,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}
    ]
    assert objects_of(documents, "Role") == []
    assert "--all-namespaces" in operator_container(documents)["args"]


@needs_helm
def test_namespaced_mode_grants_a_role_in_each_watched_namespace_only() -> None:
    documents = render(NAMESPACED)
    roles = objects_of(documents, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["batch", "queues"]
    for role in roles:
        assert permissions(role["rules"]) == REQUIRED_PERMISSIONS
    bindings = objects_of(documents, "RoleBinding")
    assert sorted(binding["metadata"]["namespace"] for binding in bindings) == ["batch", "queues"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}
        ]
    # Cluster-wide, the operator may only list and watch CRDs and namespaces (kopf's discovery;
    # the aggregated user roles bind nothing).
    (binding,) = objects_of(documents, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == f"{FULLNAME}-discovery"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}
    ]
    discovery = the(documents, "ClusterRole", f"{FULLNAME}-discovery")
    assert permissions(discovery["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("", "namespaces"): {"list", "watch"},
    }
    assert [r["metadata"]["name"] for r in objects_of(documents, "ClusterRole")] == [
        f"{FULLNAME}-discovery",
        f"{FULLNAME}-edit",
        f"{FULLNAME}-view",
    ]
    args = operator_container(documents)["args"]
    assert "--all-namespaces" not in args
    assert args[:2] == ["--namespace=queues", "--namespace=batch"]


@needs_helm
def test_no_rule_uses_wildcards_and_secrets_are_only_read_by_name_and_created() -> None:
    for values in VALUE_SETS.values():
        for document in render(values):
            for rule in document.get("rules", ()):
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[key], rule
                if "secrets" in rule["resources"]:
                    # Never list or watch (every Secret of a namespace), change or delete.
                    assert rule["resources"] == ["secrets"], rule
                    assert set(rule["verbs"]) == {"get", "create"}, rule
                    assert document["metadata"]["name"] == FULLNAME, rule
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


@needs_helm
def test_the_aggregated_user_roles() -> None:
    documents = render()
    edit = the(documents, "ClusterRole", f"{FULLNAME}-edit")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert permissions(edit["rules"])[("taskraft.io", "queueclusters/scale")] == {
        "get",
        "update",
        "patch",
    }
    view = the(documents, "ClusterRole", f"{FULLNAME}-view")
    assert all(verbs <= {"get", "list", "watch"} for verbs in permissions(view["rules"]).values())
    without = render(["--set", "rbac.aggregateToDefaultRoles=false"])
    assert [r["metadata"]["name"] for r in objects_of(without, "ClusterRole")] == [FULLNAME]


# ---------------------------------------------------------------------------------------------
# The Deployment


@needs_helm
def test_the_operator_runs_kopf_standalone_with_its_handlers() -> None:
    container = operator_container(render())
    assert container["command"] == [
        "kopf",
        "run",
        "--standalone",
        "-m",
        "taskraft_operator.handlers",
    ]
    assert container["args"] == [
        "--all-namespaces",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--log-format=json",
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "TASKRAFT_OPERATOR_METRICS_PORT", "value": "9090"} in container["env"]
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {
        "metrics": 9090,
        "health": 8080,
    }
    deployment = the(render(), "Deployment")
    # Standalone kopf: never two operators at once, not even during an upgrade.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    debug = operator_container(render(["--set", "logLevel=debug", "--set", "metrics.port=9100"]))
    assert debug["args"][-1] == "--debug"
    assert {"name": "TASKRAFT_OPERATOR_METRICS_PORT", "value": "9100"} in debug["env"]


@needs_helm
def test_the_operator_pod_meets_the_restricted_pod_security_standard() -> None:
    """The checks of the `restricted` Pod Security Standard, plus a read-only root file system
    and resource requests."""
    pod = the(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret", "projected"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsNonRoot"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"].keys() == {"cpu", "memory"}
        assert "limits" in container["resources"]
        assert not any("hostPort" in port for port in container["ports"])


# ---------------------------------------------------------------------------------------------
# Values


def values_schema() -> dict[str, Any]:
    document = json.loads((CHART / "values.schema.json").read_text())
    assert isinstance(document, dict)
    return document


def test_the_values_schema_accepts_the_default_values() -> None:
    schema = values_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))


@needs_helm
@pytest.mark.parametrize(
    ("values", "error"),
    [
        (["--set", "watchNamespace={a}"], "Additional property watchNamespace is not allowed"),
        (["--set", "watchNamespaces={Bad_Namespace}"], "watchNamespaces.0: Does not match"),
        (["--set", "logLevel=trace"], "logLevel must be one of"),
        (["--set", "metrics.port=0"], "metrics.port: Must be greater than or equal to 1"),
        (["--set", "health.port=9090"], "metrics.port and health.port must differ"),
        (["--set", "serviceMonitor.enable=true"], "Additional property enable is not allowed"),
    ],
)
def test_bad_values_are_refused(values: list[str], error: str) -> None:
    result = helm("template", RELEASE, str(CHART), "--kube-version", HELM_KUBE_VERSION, *values)
    assert result.returncode != 0
    assert error in result.stderr, result.stderr


def leaf_keys(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in ("resources",):
            keys.extend(leaf_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_the_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [key for key in leaf_keys(values) if f"`{key}`" not in readme]
    assert missing == []
    assert set(values_schema()["properties"]) - {"global"} == set(values)
