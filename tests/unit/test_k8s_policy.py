"""The Kubernetes manifests (deploy/kubernetes/) as rendered, checked against the project's policy.

Each overlay is rendered by the same command CI's check uses (``scripts/check_k8s.py render``,
i.e. ``kubectl kustomize``); without a kubectl whose kustomize is v4 or newer the tests skip
locally and fail under CI=true. Checked: probes on the right health service names, a PDB for
every workload that runs more than one pod, requests and limits on every container, the
restrictive securityContext, images pinned by tag or digest (never ``latest``), the shutdown
times, etcd's member list, and the settings: every ``FLASHSTOCK_*`` name a manifest sets must be
a setting of ``flashstock serve``, and each node container's arguments and environment (ConfigMap
values expanded, Secrets and the downward API replaced by test values, mounted folders by test
folders) must pass ``flashstock serve --check-config``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flashstock.server._config import load_config, setting_help
from tests.helpers.tls import make_certs

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts/check_k8s.py"
OVERLAYS = ("dev", "production", "production-operators")
WORKLOADS = ("Deployment", "StatefulSet")
STOCK_SERVICE = "flashstock.v1.StockService"
NODE_UID = 10001
SETTINGS = set(setting_help())
NOT_SETTINGS = {"FLASHSTOCK_CONFIG"}
"""``FLASHSTOCK_*`` variables read by the CLI that are not settings of NodeConfig."""
TEST_FIELDS = {"metadata.name": "flashstock-node-7d9c6b5f4-x2k8q", "status.podIP": "10.244.1.17"}
"""The downward API's values, as a pod would see them."""
TEST_SECRETS = {
    ("flashstock-ledger", "url"): "postgresql+psycopg://flashstock:test-password@flashstock-db-rw:5432/flashstock",
    ("flashstock-redis", "url"): "rediss://flashstock:test-password@redis-0.redis:6379/0",
}
"""Test values of every Secret key a manifest reads into the environment (the real ones are the operator's)."""
TEST_SECRET_FILES = {
    ("flashstock-tls", "tls.crt"): "node_cert",
    ("flashstock-tls", "tls.key"): "node_key",
    ("flashstock-tls", "ca.crt"): "ca",
    ("flashstock-etcd", "ca.crt"): "ca",
    ("flashstock-etcd", "tls.crt"): "client_cert",
    ("flashstock-etcd", "tls.key"): "client_key",
    ("flashstock-etcd", "password"): "test-password\n",
    ("flashstock-redis", "ca.crt"): "ca",
    ("flashstock-auth", "jwt-hs256.secret"): "0123456789abcdef" * 4 + "\n",
}
"""Test contents of every Secret key a node container mounts as a file: a field of :class:`Certs` (REAL test
certificates, made by trustme, since ``--check-config`` loads them), else the text itself."""


def _render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, str(CHECK), "render", overlay], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        message = out.stderr.strip()
        if "kubectl" in message and ("not found" in message or "too old" in message or "kustomize is" in message):
            if os.environ.get("CI") == "true":
                pytest.fail(f"under CI=true the manifests must render: {message}")
            pytest.skip(message)
        pytest.fail(message)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


_rendered: dict[str, list[dict[str, Any]]] = {}


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    overlay = request.param
    if overlay not in _rendered:
        _rendered[overlay] = _render(overlay)
    return _rendered[overlay]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise AssertionError(f"no {kind}/{name} rendered")


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d["kind"] in WORKLOADS)


def containers(workload: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return (spec.get("initContainers", []) if init else []) + spec["containers"]


def node_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (node,) = (c for c in containers(find(docs, "Deployment", "flashstock-node"), init=False) if c["name"] == "node")
    return node


def config_map(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    """A ConfigMap's data by its name before kustomize's hash suffix was added, or as rendered."""
    for d in docs:
        if d["kind"] == "ConfigMap" and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", d["metadata"]["name"]):
            return dict(d.get("data", {}))
    raise AssertionError(f"no ConfigMap {name} rendered")


def container_env(docs: list[dict[str, Any]], container: dict[str, Any], folders: Path | None = None) -> dict[str, str]:
    """The environment ``container`` starts with, as the kubelet builds it, with test values for what a
    cluster supplies: Secrets (TEST_SECRETS), the downward API (TEST_FIELDS) and, given ``folders``, each
    mounted volume's path replaced by a folder under it."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_map(docs, source["configMapRef"]["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            env[var["name"]] = TEST_FIELDS[ref["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in ref:
            env[var["name"]] = TEST_SECRETS[(ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])]
        elif "configMapKeyRef" in ref:
            env[var["name"]] = config_map(docs, ref["configMapKeyRef"]["name"])[ref["configMapKeyRef"]["key"]]
        else:
            raise AssertionError(f"{container['name']}: {var['name']}'s source is not one this test knows: {ref}")
    if folders is not None:
        _write_secret_files(docs, container, folders)
        mounts = sorted((m["mountPath"] for m in container.get("volumeMounts", [])), key=len, reverse=True)
        names = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        for key, value in env.items():
            path = next((m for m in mounts if value == m or value.startswith(m + "/")), None)
            if path is not None:
                local = folders / names[path]
                local.mkdir(parents=True, exist_ok=True)
                env[key] = str(local) + value[len(path) :]
    return env


def pod_volumes(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The volumes, by name, of the pod whose template holds ``container``."""
    for workload in workloads(docs):
        if any(c is container for c in containers(workload)):
            return {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    raise AssertionError(f"no workload holds the container {container['name']}")


def _write_secret_files(docs: list[dict[str, Any]], container: dict[str, Any], folders: Path) -> None:
    """Each Secret volume ``container`` mounts, written under ``folders/<volume>`` with TEST_SECRET_FILES' values."""
    volumes = pod_volumes(docs, container)
    certs = None
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        folder = folders / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        items = secret.get("items") or [
            {"key": k, "path": k} for (n, k) in TEST_SECRET_FILES if n == secret["secretName"]
        ]
        for item in items:
            value = TEST_SECRET_FILES[(secret["secretName"], item["key"])]
            if "\n" not in value:
                certs = certs or make_certs(folders / "certs", "k8s")
                value = getattr(certs, value).read_text()
            (folder / item["path"]).write_text(value)


def unknown_settings(env: dict[str, str]) -> list[str]:
    """The ``FLASHSTOCK_*`` names in ``env`` that name no setting (a misspelt one is silently ignored)."""
    return sorted(
        name
        for name in env
        if name.upper().startswith("FLASHSTOCK_")
        and name.upper() not in NOT_SETTINGS
        and name[len("FLASHSTOCK_") :].lower() not in SETTINGS
    )


# -- probes, disruption budgets, resources, securityContext, images ------------------------------------------------


def test_node_probes_are_native_grpc_on_the_health_services(docs):
    node = node_container(docs)
    settings = container_env(docs, node)
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    assert ports["grpc"] == int(settings["FLASHSTOCK_PORT"])
    if settings.get("FLASHSTOCK_TLS_CERT"):
        # The kubelet's gRPC probes speak plaintext only: on the node's plaintext health-only port.
        assert ports["health"] == int(settings["FLASHSTOCK_HEALTH_PORT"])
        port = ports["health"]
    else:
        port = ports["grpc"]
    # Readiness follows the stock service (NOT_SERVING while Redis is unreachable); liveness and startup
    # the server as a whole (""), which stays SERVING then, so a node without Redis is not restarted.
    assert node["readinessProbe"]["grpc"] == {"port": port, "service": STOCK_SERVICE}
    assert node["livenessProbe"]["grpc"] == {"port": port, "service": ""}
    assert node["startupProbe"]["grpc"] == {"port": port, "service": ""}


def test_production_nodes_serve_mutual_tls_and_auth_from_secrets_and_dev_stays_plaintext():
    production = _rendered.get("production") or _render("production")
    volumes = pod_volumes(production, node_container(production))
    for c in containers(find(production, "Deployment", "flashstock-node")):
        env = container_env(production, c)
        assert env["FLASHSTOCK_TLS_CERT"] and env["FLASHSTOCK_TLS_CLIENT_CA"], c["name"]
        assert env["FLASHSTOCK_AUTH"] == "on" and env["FLASHSTOCK_AUTH_JWT_KEYS"], c["name"]
        assert env["FLASHSTOCK_REDIS_URL"].startswith("rediss://") and env["FLASHSTOCK_ETCD_TLS_CA"], c["name"]
    node = node_container(production)
    env = container_env(production, node)
    mounts = {m["mountPath"]: m for m in node["volumeMounts"]}
    for name in ("TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA", "AUTH_JWT_KEYS", "REDIS_TLS_CA", "ETCD_PASSWORD_FILE"):
        path = env[f"FLASHSTOCK_{name}"]
        mount = mounts[path.rpartition("/")[0]]
        assert mount.get("readOnly") is True and "secret" in volumes[mount["name"]], name
    # The health port is a container port no NetworkPolicy opens (the kubelet's probes need no rule).
    for policy in (d for d in production if d["kind"] == "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            assert all(p["port"] not in ("health", 8081) for p in rule.get("ports", [])), policy["metadata"]["name"]

    dev = _rendered.get("dev") or _render("dev")
    env = container_env(dev, node_container(dev))
    assert not env.get("FLASHSTOCK_TLS_CERT") and env.get("FLASHSTOCK_AUTH", "off") == "off"


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume"}


def test_every_namespaced_object_names_the_overlays_namespace(docs):
    # An object without one lands in whatever namespace kubectl's context names, away from the nodes.
    [namespace] = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    stray = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if d["kind"] not in CLUSTER_SCOPED and d["metadata"].get("namespace") != namespace
    ]
    assert not stray, f"not in namespace {namespace}: {stray}"


def test_every_long_running_container_has_readiness_and_liveness_probes(docs):
    for workload in workloads(docs):
        for c in containers(workload, init=False):
            assert "readinessProbe" in c and "livenessProbe" in c, f"{workload['metadata']['name']}/{c['name']}"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_every_workload_of_more_than_one_pod_has_a_disruption_budget(docs):
    scaled = {
        d["spec"]["scaleTargetRef"]["name"]: d["spec"].get("minReplicas", 1)
        for d in docs
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    replicated = 0
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        if max(workload["spec"].get("replicas", 1), scaled.get(name, 0)) <= 1:
            continue
        replicated += 1
        labels = workload["spec"]["template"]["metadata"]["labels"]
        budgets = [p for p in pdbs if _selects(p["spec"]["selector"], labels)]
        assert budgets, f"{workload['kind']}/{name} runs several pods and no PodDisruptionBudget covers them"
    dev = any(d["kind"] == "Namespace" and d["metadata"]["name"] == "flashstock-dev" for d in docs)
    assert replicated == 0 if dev else replicated >= 2  # production: the nodes and etcd


def test_every_container_has_cpu_and_memory_requests_and_limits(docs):
    for workload in workloads(docs):
        for c in containers(workload):
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), (
                    f"{workload['metadata']['name']}/{c['name']}: {part}"
                )


def test_every_pod_runs_restricted(docs):
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod.get("automountServiceAccountToken") is False, name
        for c in containers(workload):
            sc = c["securityContext"]
            where = f"{name}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc.get("runAsUser", pod["securityContext"].get("runAsUser", 0)) >= 10000, where
            assert not sc.get("privileged", False), where


def test_flashstock_containers_run_as_the_images_user_with_a_writable_data_folder(docs):
    settings = config_map(docs, "flashstock-node")
    for c in containers(find(docs, "Deployment", "flashstock-node")):
        assert c["securityContext"]["runAsUser"] == NODE_UID
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {settings["FLASHSTOCK_DATA_DIR"], "/tmp"} <= mounts, c["name"]


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_images_are_pinned_by_tag_or_digest_and_never_latest(docs):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for workload in workloads(docs):
        for c in containers(workload):
            assert _pinned(c["image"]), f"{workload['metadata']['name']}/{c['name']}: {c['image']!r}"
            if c["image"].rpartition(":")[0].endswith("flashstock"):
                assert c["image"].endswith(f":{version}"), f"{c['image']} is not this release ({version})"


def test_pin_check_refuses_latest_and_untagged_images():
    assert _pinned("redis:7.2.6") and _pinned("quay.io/coreos/etcd:v3.5.17") and _pinned("x@sha256:" + "0" * 64)
    assert not _pinned("redis") and not _pinned("redis:latest") and not _pinned("localhost:5000/redis")


# -- shutdown, spread, etcd, ledger ----------------------------------------------------------------------------------


def test_termination_grace_outlasts_the_prestop_pause_and_the_nodes_own_grace(docs):
    node_deploy = find(docs, "Deployment", "flashstock-node")
    pod = node_deploy["spec"]["template"]["spec"]
    pre_stop = node_container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace_s = float(config_map(docs, "flashstock-node")["FLASHSTOCK_GRACE_S"])
    # SIGTERM comes after preStop; then grace_s for calls in flight; then the duties process stops
    # and the etcd lease is revoked: at least 5 s more before the kubelet's SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace_s + 5


def test_nodes_spread_across_zones_and_hosts(docs):
    pod = find(docs, "Deployment", "flashstock-node")["spec"]["template"]["spec"]
    keys = {t["topologyKey"] for t in pod["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_etcd_member_list_matches_its_replicas_and_the_nodes_endpoints(docs):
    etcd = find(docs, "StatefulSet", "etcd")
    members = config_map(docs, "etcd")["ETCD_INITIAL_CLUSTER"].split(",")
    assert [m.partition("=")[0] for m in members] == [f"etcd-{i}" for i in range(etcd["spec"]["replicas"])]
    endpoints = config_map(docs, "flashstock-node")["FLASHSTOCK_ETCD"].split(",")
    assert endpoints == [f"etcd-{i}.etcd:2379" for i in range(etcd["spec"]["replicas"])]
    anti = etcd["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"


def test_the_overlays_shapes():
    dev, production = _rendered.get("dev") or _render("dev"), _rendered.get("production") or _render("production")
    assert find(dev, "Deployment", "flashstock-node")["spec"]["replicas"] == 1
    assert find(dev, "StatefulSet", "etcd")["spec"]["replicas"] == 1
    assert not [d for d in dev if d["kind"] == "HorizontalPodAutoscaler"]
    volumes = find(dev, "Deployment", "flashstock-node")["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "data")["persistentVolumeClaim"]["claimName"]
    assert "FLASHSTOCK_LEDGER" not in container_env(dev, node_container(dev))  # the embedded SQLite in /data

    assert find(production, "Deployment", "flashstock-node")["spec"]["replicas"] >= 3
    assert find(production, "HorizontalPodAutoscaler", "flashstock-node")["spec"]["minReplicas"] >= 3
    assert find(production, "StatefulSet", "etcd")["spec"]["replicas"] == 3
    for c in containers(find(production, "Deployment", "flashstock-node")):
        assert container_env(production, c)["FLASHSTOCK_LEDGER"].startswith("postgresql+psycopg://"), c["name"]
    redis_conf = config_map(production, "redis")["redis.conf"]
    assert "appendonly yes" in redis_conf and "maxmemory-policy noeviction" in redis_conf


def test_the_prometheus_rule_is_the_alert_rules_file():
    rule = yaml.safe_load((ROOT / "deploy/kubernetes/components/monitoring/prometheusrule.yaml").read_text())
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "run: .venv/bin/python scripts/k8s_rules.py"


# -- settings: no drift between the manifests and the program --------------------------------------------------------


def test_every_flashstock_variable_in_the_manifests_is_a_setting(docs):
    for workload in workloads(docs):
        for c in containers(workload):
            env = container_env(docs, c)
            assert not unknown_settings(env), f"{workload['metadata']['name']}/{c['name']}: not settings"


def test_a_misspelt_setting_is_caught():
    docs = [dict(d) for d in (_rendered.get("dev") or _render("dev"))]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("flashstock-node"))
    cm["data"] = {**cm["data"], "FLASHSTOCK_GRACE_SECONDS": "10"}
    assert unknown_settings(container_env(docs, node_container(docs))) == ["FLASHSTOCK_GRACE_SECONDS"]


def test_each_node_containers_settings_load_as_the_node_reads_them(docs, tmp_path):
    # In-process, what `flashstock serve` does first: flags > FLASHSTOCK_* > defaults, every value typed and
    # range-checked (NodeConfig). --check-config (below) goes further: files, and what a start would check.
    for c in containers(find(docs, "Deployment", "flashstock-node")):
        env = container_env(docs, c, tmp_path)
        config = load_config(flags={}, env=env)
        assert config.data_dir == str(tmp_path / "data"), c["name"]
    config = load_config(flags={}, env=container_env(docs, node_container(docs), tmp_path))
    assert config.node_id == TEST_FIELDS["metadata.name"]
    assert config.advertise == f"{TEST_FIELDS['status.podIP']}:{config.port}"


def test_an_out_of_range_setting_in_a_manifest_fails_to_load(tmp_path):
    docs = _rendered.get("dev") or _render("dev")
    env = {**container_env(docs, node_container(docs), tmp_path), "FLASHSTOCK_GRACE_S": "-1"}
    with pytest.raises(ValueError, match="grace_s"):
        load_config(flags={}, env=env)


def _check_config() -> list[str]:
    flashstock = shutil.which("flashstock", path=str(Path(sys.executable).parent)) or "flashstock"
    return [flashstock, "serve", "--check-config"]


def _run_check(command: list[str], container: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLASHSTOCK_")}
    return subprocess.run(
        command + list(container.get("args", [])),
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_each_node_containers_settings_pass_check_config(docs, tmp_path):
    command = _check_config()
    node = node_container(docs)
    out = _run_check(command, node, container_env(docs, node, tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_check_config_fails_a_manifest_with_an_out_of_range_setting(tmp_path):
    command = _check_config()
    docs = _rendered.get("production") or _render("production")
    node = node_container(docs)
    env = {**container_env(docs, node, tmp_path), "FLASHSTOCK_GRACE_S": "-1"}
    out = _run_check(command, node, env)
    assert out.returncode == 2 and "grace_s" in out.stdout + out.stderr, out.stdout + out.stderr


def test_check_config_fails_a_manifest_with_a_misspelt_setting(tmp_path):
    command = _check_config()
    docs = [dict(d) for d in (_rendered.get("dev") or _render("dev"))]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("flashstock-node"))
    cm["data"] = {**cm["data"], "FLASHSTOCK_GRACE_SECONDS": "10"}
    node = node_container(docs)
    out = _run_check(command, node, container_env(docs, node, tmp_path))
    assert out.returncode == 2 and "FLASHSTOCK_GRACE_SECONDS" in out.stdout + out.stderr, out.stdout + out.stderr
