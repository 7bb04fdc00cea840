"""The Helm chart: lint, render (default values and every option on), validate what it renders.

Built-in kinds are checked by kubernetes-validate (strict: unknown fields are errors) for the
oldest and newest Kubernetes the chart supports; our CRDs are checked as CRDs; the Prometheus
Operator's kinds (no schema here) are checked for the fields the chart relies on.
"""

from __future__ import annotations

import json
import re

import jsonschema
import kubernetes_validate
import pytest

from .conftest import ALL_OPTIONS, CHART, K8S_VERSIONS, NAMESPACE, ROOT, load_yaml, run

MONITORING = "monitoring.coreos.com/v1"
VALUE_SETS = {"default": None, "all-options": ALL_OPTIONS}


def by_kind(objs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_is_clean(helm, values):
    cmd = [helm, "lint", "--strict", str(CHART)]
    if values:
        cmd += ["--values", str(values)]
    out = run(cmd).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_builtin_objects_validate(render, values, version):
    objs = render(values)
    builtin = [o for o in objs if o["apiVersion"] != MONITORING]
    assert builtin
    for obj in builtin:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} (k8s {version}): {e.message}")


def test_the_validation_is_not_vacuous(render):
    (dep,) = by_kind(render())["Deployment"]
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[0], strict=True)


def test_default_render_has_the_expected_objects(render):
    kinds = by_kind(render())
    assert sorted(kinds) == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "Deployment",
            "Service",
            "ServiceAccount",
        ]
    )
    assert len(kinds["CustomResourceDefinition"]) == 3  # ARRun, DiffusionRun, ScalingStudy
    assert len(kinds["ConfigMap"]) == 2  # the two dashboards


def test_all_options_render_has_every_optional_object(render):
    kinds = by_kind(render(ALL_OPTIONS))
    for kind in (
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
    ):
        assert kind in kinds, kind
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    namespaces = {r["metadata"]["namespace"] for r in kinds["Role"]}
    assert namespaces == {"research", "research-staging"}


def test_chart_crds_are_the_generated_crds():
    top = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert top == chart and top
    for name in top:
        assert (ROOT / "crds" / name).read_bytes() == (CHART / "crds" / name).read_bytes(), name


def test_crds_are_valid_crds(render):
    crds = by_kind(render())["CustomResourceDefinition"]
    assert {c["spec"]["names"]["kind"] for c in crds} == {"DiffusionRun", "ARRun", "ScalingStudy"}
    for crd in crds:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(crd, version, strict=True)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_operator_deployment(render, values):
    (dep,) = by_kind(render(values))["Deployment"]
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["diffar"] and c["args"][0] == "operator"
    assert "--standalone" in c["args"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    # The liveness and metrics ports are the ones the operator is told to use.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in c["args"]
    assert f"--metrics-port={ports['metrics']}" in c["args"]
    # The environment is what diffar.operator reads (runs.Settings.from_env).
    env = {e["name"] for e in c["env"]}
    assert {"DIFFAR_PROGRESS_INTERVAL", "DIFFAR_NCCL_DEBUG"} <= env
    # Every volume mount's volume exists (the read-only root needs a writable /tmp).
    vols = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in c["volumeMounts"]} <= vols


def test_all_options_reach_the_deployment(render):
    objs = by_kind(render(ALL_OPTIONS))
    values = load_yaml(ALL_OPTIONS)
    (dep,) = objs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == f"{values['image']['repository']}@{values['image']['digest']}"
    assert [a for a in c["args"] if a.startswith("--namespace=")] == [
        f"--namespace={n}" for n in values["operator"]["watchNamespaces"]
    ]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DIFFAR_PUSHGATEWAY_URL"] == values["pushgateway"]["url"]
    assert env["DIFFAR_METRICS_URL_TEMPLATE"] == values["operator"]["metricsUrlTemplate"]
    assert env["DIFFAR_NCCL_DEBUG"] == "INFO"
    assert env["HTTPS_PROXY"] == "http://proxy.example.com:3128"
    assert "--verbose" in c["args"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["priorityClassName"] == values["priorityClassName"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["serviceAccountName"] == "diffar-operator"
    (svc,) = objs["Service"]
    assert svc["spec"]["ports"][0]["port"] == values["service"]["port"]
    for cm in objs["ConfigMap"]:
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "diffar"}


def test_monitors_point_at_real_ports(render):
    objs = by_kind(render(ALL_OPTIONS))
    (svc,) = objs["Service"]
    (sm,) = objs["ServiceMonitor"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (pm,) = objs["PodMonitor"]
    # The trainer pods the operator builds carry these labels and a port named metrics.
    from diffar.operator.builders import build_pytorchjob
    from diffar.operator.runs import Run, Settings

    job = build_pytorchjob(Run.from_body(load_yaml(ROOT / "examples" / "ar-100m.yaml")), Settings())
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert ports[endpoint["port"]] == 9400
    assert pm["spec"]["namespaceSelector"]["matchNames"] == ["research", "research-staging"]
    assert by_kind(render(None, "metrics.podMonitor.enabled=true"))["PodMonitor"][0]["spec"][
        "namespaceSelector"
    ] == {"any": True}


def test_dashboards_are_labelled_configmaps(render):
    cms = by_kind(render())["ConfigMap"]
    names = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert len(cms) == len(names) >= 2
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = cm["data"].items()
        assert key in names
        assert json.loads(text) == json.loads((CHART / "dashboards" / key).read_text())
    assert "ConfigMap" not in by_kind(render(None, "dashboards.enabled=false"))


def test_values_schema_accepts_the_values_and_rejects_unknown_keys():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    for path in (CHART / "values.yaml", ALL_OPTIONS):
        jsonschema.validate(load_yaml(path), schema)
    bad = load_yaml(CHART / "values.yaml")
    bad["operator"]["watchNamespace"] = ["typo"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_helm_refuses_values_outside_the_schema(helm):
    import subprocess

    proc = subprocess.run(
        [helm, "template", "x", str(CHART), "--set", "operator.watchNamespaces[0]=Bad_NS"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "watchNamespaces" in proc.stderr


def test_every_value_is_documented():
    """Each key of values.yaml has a comment right above it, or sits inside a value documented
    as a whole (a `# --` comment above an ancestor, e.g. resources.requests.cpu)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented as a whole) of the open ancestors
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w./-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            j -= 1
        block = [ln.strip() for ln in lines[j + 1 : i]]  # the comment block right above
        above = block[-1] if block else ""
        whole = bool(block) and block[0].startswith("# --")
        if not above.startswith("#") and not any(w for _, w in stack):
            undocumented.append(m.group(2))
        stack.append((indent, whole))
    assert undocumented == []


def test_namespaced_mode_has_no_cluster_scoped_objects(render):
    objs = render(None, "operator.watchNamespaces={a,b}")
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    assert not [o for o in objs if o["kind"] in cluster_scoped]
    for o in objs:
        if o["kind"] not in ("CustomResourceDefinition",):
            assert o["metadata"].get("namespace"), o["kind"]
    bindings = [o for o in objs if o["kind"] == "RoleBinding"]
    assert [b["subjects"][0]["namespace"] for b in bindings] == [NAMESPACE, NAMESPACE]


def test_notes_render(helm):
    out = run([helm, "install", "diffar", str(CHART), "--dry-run=client", "-n", NAMESPACE]).stdout
    assert "kubectl get crd pytorchjobs.kubeflow.org" in out
    assert "No Pushgateway is set" in out


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_chart_installs_on_supported_kubernetes(helm, version):
    run([helm, "template", "x", str(CHART), "--kube-version", f"{version}.0"])


def test_chart_refuses_unsupported_kubernetes(helm):
    import subprocess

    proc = subprocess.run(
        [helm, "template", "x", str(CHART), "--kube-version", "1.27.0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr


def test_network_policies_select_the_operator_and_the_run_pods(render):
    """Optional (networkPolicy.enabled): the operator's in/out, and the run pods' in."""
    from diffar.operator.builders import build_pytorchjob, labels
    from diffar.operator.runs import Run, Settings

    objs = render(ALL_OPTIONS)
    policies = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p
        for p in objs
        if p["kind"] == "NetworkPolicy"
    }
    assert set(policies) == {
        (NAMESPACE, "diffar-ops"),
        ("research", "diffar-ops-runs"),
        ("research-staging", "diffar-ops-runs"),
    }
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    operator = policies[(NAMESPACE, "diffar-ops")]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert operator["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert operator["policyTypes"] == ["Ingress", "Egress"]
    # The trainer pods the operator reads progress from carry the labels its egress rule names.
    run = Run.from_body(load_yaml(ROOT / "examples" / "ar-100m.yaml"))
    trainer = build_pytorchjob(run, Settings())["spec"]["pytorchReplicaSpecs"]["Master"]
    trainer_labels = trainer["template"]["metadata"]["labels"]
    to_trainers = [r for r in operator["egress"] if {"port": 9400, "protocol": "TCP"} in r["ports"]]
    (rule,) = to_trainers
    assert rule["to"][0]["podSelector"]["matchLabels"].items() <= trainer_labels.items()
    runs = policies[("research", "diffar-ops-runs")]["spec"]
    assert runs["podSelector"]["matchLabels"].items() <= labels(run, "evaluator").items()
    assert runs["podSelector"]["matchLabels"].items() <= trainer_labels.items()
    assert runs["policyTypes"] == ["Ingress"]
    assert not [o for o in render() if o["kind"] == "NetworkPolicy"]  # off by default


def test_operator_pod_passes_pod_security_restricted(render):
    from testsupport.pod_security import pod_specs, violations

    for values in (None, ALL_OPTIONS):
        (dep,) = [o for o in render(values) if o["kind"] == "Deployment"]
        for name, pod in pod_specs(dep):
            assert violations(pod) == [], name


def test_the_operator_image_can_be_pinned_by_digest(render):
    digest = "sha256:" + "b" * 64
    (dep,) = [o for o in render(None, f"image.digest={digest}") if o["kind"] == "Deployment"]
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/diffar/diffar-operator@{digest}"


def test_the_pushgateway_value_has_the_run_apis_url_pattern():
    from diffar.operator.urls import URL_PATTERN

    schema = json.loads((CHART / "values.schema.json").read_text())
    pattern = schema["properties"]["pushgateway"]["properties"]["url"]["pattern"]
    assert pattern == f"^({URL_PATTERN[1:-1]})?$"
    for bad in ("http://pg:9091/?x=1", "http://user@pg:9091", "http://pg:9091/#f"):
        assert not re.search(pattern, bad), bad


# --- backend: trainjob (Kubeflow Trainer v2; the runtime itself: tests/operator/test_trainjob.py)

TRAINER = "trainer.kubeflow.org/v1alpha1"


@pytest.mark.parametrize("sets", [(), ("operator.watchNamespaces={a,b}",)], ids=["cluster", "ns"])
def test_trainjob_backend_renders_lints_and_validates(helm, render, sets):
    sets = ("backend=trainjob", "metrics.podMonitor.enabled=true", *sets)
    out = run([helm, "lint", "--strict", str(CHART), *(a for s in sets for a in ("--set", s))])
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout
    objs = render(None, *sets)
    runtimes = [o for o in objs if o["apiVersion"] == TRAINER]
    assert runtimes and {o["metadata"]["name"] for o in runtimes} == {"diffar-torch"}
    for obj in objs:
        if obj["apiVersion"] not in (MONITORING, TRAINER):
            kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
    (dep,) = by_kind(objs)["Deployment"]
    assert "--backend=trainjob" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    (pm,) = by_kind(objs)["PodMonitor"]
    (rank0,) = pm["spec"]["selector"]["matchExpressions"]
    assert rank0 == {
        "key": "batch.kubernetes.io/job-completion-index",
        "operator": "In",
        "values": ["0"],
    }


def test_default_backend_ships_no_runtime(render):
    objs = render()
    assert not [o for o in objs if o["apiVersion"] == TRAINER]
    (dep,) = by_kind(objs)["Deployment"]
    assert "--backend=pytorchjob" in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_helm_refuses_an_unknown_backend(helm):
    import subprocess

    proc = subprocess.run(
        [helm, "template", "x", str(CHART), "--set", "backend=tfjob"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "backend" in proc.stderr
