"""The cluster/ folder: manifests, image, `ray up` config and dashboard parse, say what they must,
and agree with each other, with the project's configs and with the Ray this venv has.

cluster/drift-raycronjob.yaml (KubeRay >= 1.6 RayCronJob) and cluster/drift-cronjob.yaml
(a Kubernetes CronJob creating a RayJob) must run the same RayJob: the test compares the two
specs. cluster/raycluster.yaml, cluster/rayjob-*.yaml, cluster/ray-up.yaml, cluster/Dockerfile,
cluster/prometheus-podmonitor.yaml and cluster/grafana-dashboard.json are checked below.
Files only; no Ray cluster, no Kubernetes, no network.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from babelray.config import load_config

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
RAYCRONJOB = CLUSTER / "drift-raycronjob.yaml"
CRONJOB = CLUSTER / "drift-cronjob.yaml"

DRIFT_COMMAND = ["babelray", "drift", "--config", "configs/drift.yaml"]
SECRET_NAME = "babelray-object-store"
# The RayCronJob spec fields of KubeRay 1.6 (ray.io_raycronjobs.yaml CRD, RayCronJob quickstart).
RAYCRONJOB_FIELDS = {"schedule", "jobTemplate", "suspend"}
# RayJob spec fields documented by KubeRay (RayJob quickstart, rayjob_types.go).
RAYJOB_FIELDS = {
    "entrypoint", "rayClusterSpec", "clusterSelector", "runtimeEnvYAML", "jobId", "metadata",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "backoffLimit",
    "submissionMode", "submitterPodTemplate", "submitterConfig", "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished", "activeDeadlineSeconds", "suspend", "managedBy", "deletionStrategy",
}
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
CREDENTIAL_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|KEY", re.IGNORECASE)


def _load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _one(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def raycronjob() -> dict:
    return _one(_load(RAYCRONJOB), "RayCronJob")


@pytest.fixture(scope="module")
def cron_docs() -> list[dict]:
    return _load(CRONJOB)


@pytest.fixture(scope="module")
def cronjob(cron_docs) -> dict:
    return _one(cron_docs, "CronJob")


@pytest.fixture(scope="module")
def embedded_rayjob(cron_docs, cronjob) -> dict:
    """The RayJob in the ConfigMap that the CronJob's pod mounts and `kubectl create`s."""
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container.get("command", []) + container.get("args", [])
    assert command[:3] == ["kubectl", "create", "-f"], command
    manifest_path = Path(command[3])
    mount = next(m for m in container["volumeMounts"] if manifest_path.parent == Path(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = next(d for d in cron_docs
                     if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"])
    docs = [d for d in yaml.safe_load_all(configmap["data"][manifest_path.name]) if d is not None]
    assert len(docs) == 1
    return docs[0]


def _assert_cron(schedule) -> None:
    assert isinstance(schedule, str)
    fields = schedule.split()
    assert len(fields) == 5, schedule
    assert all(CRON_FIELD.match(field) for field in fields), schedule


def _containers(rayjob_spec: dict) -> list[dict]:
    cluster = rayjob_spec["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def _env_lists(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield value
            yield from _env_lists(value)
    elif isinstance(node, list):
        for item in node:
            yield from _env_lists(item)


def test_raycronjob(raycronjob):
    assert raycronjob["apiVersion"] == "ray.io/v1"
    assert raycronjob["kind"] == "RayCronJob"
    spec = raycronjob["spec"]
    assert set(spec) <= RAYCRONJOB_FIELDS
    _assert_cron(spec["schedule"])
    job = spec["jobTemplate"]
    assert set(job) <= RAYJOB_FIELDS
    assert shlex.split(job["entrypoint"]) == DRIFT_COMMAND
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert isinstance(head["image"], str) and head["image"]


def test_rayjob_is_not_retried_and_cleans_up(raycronjob):
    job = raycronjob["spec"]["jobTemplate"]
    assert job["backoffLimit"] == 0  # a failed drift run (exit 4) is not re-run
    assert job["submitterConfig"]["backoffLimit"] == 0
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] >= 0
    # The deadline keeps a run from overlapping the next one (every 6 hours).
    assert 0 < job["activeDeadlineSeconds"] < 6 * 3600


def test_cluster_gets_object_store_credentials_from_the_secret(raycronjob):
    for container in _containers(raycronjob["spec"]["jobTemplate"]):
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert SECRET_NAME in refs, container["name"]


def test_cronjob(cronjob):
    assert cronjob["apiVersion"] == "batch/v1"
    spec = cronjob["spec"]
    _assert_cron(spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid"
    assert "successfulJobsHistoryLimit" in spec and "failedJobsHistoryLimit" in spec
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}


def test_both_manifests_run_the_same_rayjob(raycronjob, cronjob, embedded_rayjob):
    assert embedded_rayjob["apiVersion"] == "ray.io/v1"
    assert embedded_rayjob["kind"] == "RayJob"
    metadata = embedded_rayjob["metadata"]
    assert "generateName" in metadata and "name" not in metadata  # a new RayJob every run
    assert embedded_rayjob["spec"] == raycronjob["spec"]["jobTemplate"]
    assert cronjob["spec"]["schedule"] == raycronjob["spec"]["schedule"]


def test_rbac_lets_the_cronjob_create_rayjobs(cron_docs, cronjob):
    account = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    service_account = _one(cron_docs, "ServiceAccount")
    role = _one(cron_docs, "Role")
    binding = _one(cron_docs, "RoleBinding")
    assert service_account["metadata"]["name"] == account
    assert any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"])
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    rayjob_rules = [r for r in role["rules"] if "ray.io" in r["apiGroups"] and "rayjobs" in r["resources"]]
    assert rayjob_rules
    assert {"create", "get", "list"} <= {verb for rule in rayjob_rules for verb in rule["verbs"]}


def test_no_inline_credentials(raycronjob, cron_docs, embedded_rayjob):
    docs = [raycronjob, *cron_docs, embedded_rayjob]
    assert not [d for d in docs if d["kind"] == "Secret"]
    env_vars = [var for doc in docs for env in _env_lists(doc) for var in env]
    inline = [var["name"] for var in env_vars if CREDENTIAL_NAME.search(var["name"]) and "value" in var]
    assert not inline, f"credentials inline in a manifest: {inline}"


# --------------------------------------------------------------------------------------------
# The Ray cluster on Kubernetes, the RayJobs, the image, `ray up`, metrics.

RAYCLUSTER = CLUSTER / "raycluster.yaml"
RAYJOBS = {"run": CLUSTER / "rayjob-ingest.yaml", "reembed": CLUSTER / "rayjob-reembed.yaml"}
RAY_UP = CLUSTER / "ray-up.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
PODMONITOR = CLUSTER / "prometheus-podmonitor.yaml"
DASHBOARD = CLUSTER / "grafana-dashboard.json"
PRODUCTION_CONFIG = REPO / "configs" / "qwen3-embedding-4b.yaml"
K8S_MANIFESTS = sorted(set(CLUSTER.glob("*.yaml")) - {RAY_UP})

METRICS_PORT = 8080
TOKEN_AUTH_MIN_RAY = (2, 52)
# An embedding actor of a 4B-parameter model: ~8 GB of bf16 weights pass through host memory,
# and Ray's object store takes 30% of the pod's memory.
MIN_GPU_POD_MEMORY = 16 * 2**30
# Literal values that look like a credential: an AWS access key id, a private key, a long hex
# or base64 run (a generated token).
CREDENTIAL_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY|\b[0-9a-fA-F]{32,}\b"
                              r"|[A-Za-z0-9+/]{40,}={0,2}")
RAY_DATA_PANELS = Path("dashboard") / "modules" / "metrics" / "dashboards" / "data_dashboard_panels.py"


def _walk(node):
    """Every mapping in a parsed document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _all_k8s_docs() -> list[dict]:
    """Every Kubernetes object in cluster/, with the RayJob kept in the drift ConfigMap."""
    docs = [doc for path in K8S_MANIFESTS for doc in _load(path)]
    for configmap in [d for d in docs if d.get("kind") == "ConfigMap"]:
        for text in configmap.get("data", {}).values():
            docs += [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    return docs


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return _one(_load(RAYCLUSTER), "RayCluster")


@pytest.fixture(scope="module")
def rayjobs() -> dict[str, dict]:
    return {command: _one(_load(path), "RayJob") for command, path in RAYJOBS.items()}


@pytest.fixture(scope="module")
def production_config():
    return load_config(PRODUCTION_CONFIG)


@pytest.fixture(scope="module")
def ray_up() -> dict:
    return yaml.safe_load(RAY_UP.read_text())


RAY_CLUSTER_SPECS = ("raycluster.yaml", "drift-raycronjob.yaml", "drift-cronjob.yaml (ConfigMap)")


def _ray_cluster_specs() -> dict[str, dict]:
    """Every RayCluster spec cluster/ creates: the long-lived one and the drift job's."""
    (rayjob,) = [d for d in _all_k8s_docs() if d.get("kind") == "RayJob" and "rayClusterSpec" in d["spec"]]
    return {
        "raycluster.yaml": _one(_load(RAYCLUSTER), "RayCluster")["spec"],
        "drift-raycronjob.yaml": _one(_load(RAYCRONJOB), "RayCronJob")["spec"]["jobTemplate"]["rayClusterSpec"],
        "drift-cronjob.yaml (ConfigMap)": rayjob["spec"]["rayClusterSpec"],
    }


def _groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]


def _ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first


def _quantity(value) -> float:
    """A Kubernetes resource quantity: "4", "500m", "16Gi", "32G", 1."""
    text = str(value)
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40),
                           ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12), ("m", 1e-3)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _pod_resource(group: dict, name: str) -> float:
    resources = _ray_container(group).get("resources", {})
    value = resources.get("limits", {}).get(name, resources.get("requests", {}).get(name))
    return 0.0 if value is None else _quantity(value)


def _ray_cpus(group: dict) -> float:
    """The CPUs Ray schedules on in a pod: num-cpus when given, else the container's CPU."""
    params = group.get("rayStartParams", {})
    return float(params["num-cpus"]) if "num-cpus" in params else _pod_resource(group, "cpu")


def _gpus(resources) -> float:
    return 1.0 if resources.num_gpus == "auto" else float(resources.num_gpus)


def _gpu_stages(cfg) -> dict:
    stages = {"embedding": cfg.embedding.resources}
    if cfg.translation.enabled:
        stages["translation"] = cfg.translation.resources
    return stages


def _cpu_stages(cfg) -> dict:
    return {"langid": cfg.langid.resources, "chunking": cfg.chunking.resources}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3])


def _config_path(entrypoint: str) -> str:
    args = shlex.split(entrypoint)
    assert "--config" in args, entrypoint
    return args[args.index("--config") + 1]


def test_every_manifest_parses_and_names_its_objects():
    assert K8S_MANIFESTS, "no manifests in cluster/"
    for path in K8S_MANIFESTS:
        docs = _load(path)
        assert docs, path.name
        for doc in docs:
            assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], path.name
            assert isinstance(doc.get("kind"), str) and doc["kind"], path.name
            assert isinstance(doc.get("metadata", {}).get("name"), str) and doc["metadata"]["name"], \
                f"{path.name}: a {doc['kind']} without metadata.name"


def test_raycluster(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["metadata"]["name"] == "babelray"
    spec = raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values())  # KubeRay: strings
    assert params["num-cpus"] == "0"  # no pipeline work on the head
    assert params["dashboard-host"] == "0.0.0.0"
    container = _ray_container(head)
    assert isinstance(container["image"], str) and container["image"]
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for group in groups:
        assert isinstance(group["groupName"], str) and group["groupName"]
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(group[key], int), (group["groupName"], key)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        assert isinstance(group["rayStartParams"], dict)
        assert _ray_container(group)["image"] == container["image"], group["groupName"]
    gpu_groups = [g for g in groups if _pod_resource(g, "nvidia.com/gpu") > 0]
    assert len(gpu_groups) == 1
    assert gpu_groups[0]["minReplicas"] == 0  # GPU pods only while GPU actors want them
    assert _pod_resource(gpu_groups[0], "nvidia.com/gpu") == 1


@pytest.mark.parametrize("name", RAY_CLUSTER_SPECS)
def test_token_auth_is_on(name):
    spec = _ray_cluster_specs()[name]
    assert _version_tuple(spec["rayVersion"]) >= TOKEN_AUTH_MIN_RAY, "token auth needs Ray >= 2.52"
    if spec.get("authOptions") is not None:
        assert spec["authOptions"]["mode"] == "token"
        return
    # The manual wiring: every Ray container, and the autoscaler, with the token from a Secret.
    env_lists = [_ray_container(group).get("env", []) for group in _groups(spec)]
    if spec.get("enableInTreeAutoscaling"):
        env_lists.append(spec.get("autoscalerOptions", {}).get("env", []))
    for env in env_lists:
        by_name = {var["name"]: var for var in env}
        assert by_name.get("RAY_AUTH_MODE", {}).get("value") == "token", name
        assert "secretKeyRef" in by_name.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}), name


@pytest.mark.parametrize("name", RAY_CLUSTER_SPECS)
def test_every_ray_container_exports_metrics(name):
    spec = _ray_cluster_specs()[name]
    for group in _groups(spec):
        assert group["rayStartParams"].get("metrics-export-port") == str(METRICS_PORT), name
        ports = {port.get("name"): port["containerPort"] for port in _ray_container(group).get("ports", [])}
        assert ports.get("metrics") == METRICS_PORT, name


@pytest.mark.parametrize("name", RAY_CLUSTER_SPECS)
def test_object_store_credentials_come_from_the_secret(name):
    for group in _groups(_ray_cluster_specs()[name]):
        refs = [e["secretRef"]["name"] for e in _ray_container(group).get("envFrom", []) if "secretRef" in e]
        assert SECRET_NAME in refs, name


def test_no_credentials_in_any_file():
    docs = _all_k8s_docs()
    assert not [d for d in docs if d["kind"] == "Secret"], "Secrets are created with kubectl, not shipped"
    env_vars = [var for doc in docs for env in _env_lists(doc) for var in env]
    inline = [var["name"] for var in env_vars if CREDENTIAL_NAME.search(var["name"]) and "value" in var]
    assert not inline, f"credentials inline in a manifest: {inline}"
    ray_up = yaml.safe_load(RAY_UP.read_text())
    named = ((d["metadata"].get("name") or d["metadata"]["generateName"], d) for d in docs)
    for label, node in [*named, ("ray-up.yaml", ray_up),
                        ("grafana-dashboard.json", json.loads(DASHBOARD.read_text()))]:
        found = [s for s in _strings(node) if CREDENTIAL_VALUE.search(s)]
        assert not found, f"{label}: credential-looking values {found}"
    commands = " ".join(str(c) for key, value in ray_up.items() if key.endswith("_commands") for c in value)
    assert not re.search(r"RAY_AUTH_TOKEN=", commands), "the token goes in a file (RAY_AUTH_TOKEN_PATH)"
    for line in DOCKERFILE.read_text().splitlines():
        if re.match(r"\s*(ENV|ARG)\s", line):
            assert not CREDENTIAL_NAME.search(line.split()[1]), line


def test_nothing_is_exposed_outside_the_cluster(ray_up):
    for doc in _all_k8s_docs():
        name = doc["metadata"].get("name") or doc["metadata"]["generateName"]
        assert doc["kind"] not in {"Ingress", "Gateway", "HTTPRoute", "Route"}, name
        if doc["kind"] == "Service":
            assert doc.get("spec", {}).get("type", "ClusterIP") == "ClusterIP", name
        for node in _walk(doc):
            assert node.get("serviceType", "ClusterIP") == "ClusterIP", name
            assert node.get("type") not in {"LoadBalancer", "NodePort"}, name
            assert node.get("enableIngress") is not True, name
            assert node.get("hostNetwork") is not True and "hostPort" not in node, name
    head_start = " ".join(ray_up["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # reached only through `ray dashboard` (SSH)


def test_ray_version_is_the_same_everywhere(ray_up):
    installed = importlib.metadata.version("ray")
    base = re.search(r"^FROM\s+rayproject/ray:(\d+\.\d+\.\d+)-py(\d+)-gpu\s*$", DOCKERFILE.read_text(), re.M)
    assert base, "cluster/Dockerfile: FROM rayproject/ray:<version>-py<xy>-gpu"
    assert base.group(1) == installed
    arg = re.search(r"^ARG\s+RAY_VERSION=(\S+)", DOCKERFILE.read_text(), re.M)
    assert arg and arg.group(1) == installed
    for name, spec in _ray_cluster_specs().items():
        assert spec["rayVersion"] == installed, name
    setup = " ".join(ray_up["setup_commands"])
    assert re.findall(r"ray\[[a-z,]+\]==(\S+?)\"", setup) == [installed]
    # One Python for the image and the VMs.
    assert re.search(r"--python 3\.(\d+)", setup).group(1) == base.group(2)[1:]


def test_gpu_group_fits_the_gpu_actors(raycluster, production_config):
    (gpu,) = [g for g in raycluster["spec"]["workerGroupSpecs"] if _pod_resource(g, "nvidia.com/gpu") > 0]
    stages = _gpu_stages(production_config)
    assert "translation" in stages  # the production config translates
    for stage, resources in stages.items():
        assert _gpus(resources) >= 1, stage
        assert _gpus(resources) <= _pod_resource(gpu, "nvidia.com/gpu"), stage
        assert resources.num_cpus <= _ray_cpus(gpu), f"{stage}: {resources.num_cpus} CPUs per actor"
    assert _pod_resource(gpu, "memory") >= MIN_GPU_POD_MEMORY
    # The smallest pools of all GPU stages run at once: one GPU pod per GPU actor.
    needed = sum(r.min_actors * _gpus(r) for r in stages.values())
    assert needed <= gpu["maxReplicas"] * _pod_resource(gpu, "nvidia.com/gpu")


def test_cpu_group_fits_the_cpu_actors_and_the_driver(raycluster, rayjobs, production_config):
    spec = raycluster["spec"]
    assert _ray_cpus(spec["headGroupSpec"]) == 0
    cpu_groups = [g for g in spec["workerGroupSpecs"] if _pod_resource(g, "nvidia.com/gpu") == 0]
    assert cpu_groups
    driver = max(job["spec"].get("entrypointNumCpus", 0) for job in rayjobs.values())
    stages = _cpu_stages(production_config)
    for group in cpu_groups:
        # One actor of each CPU stage next to the driver, which the head (0 CPUs) cannot take.
        assert sum(r.num_cpus for r in stages.values()) + driver <= _ray_cpus(group), group["groupName"]
    needed = sum(r.min_actors * r.num_cpus for r in stages.values()) + driver
    assert needed <= sum(g["maxReplicas"] * _ray_cpus(g) for g in cpu_groups)


def test_rayjobs(raycluster, rayjobs):
    for command, job in rayjobs.items():
        assert job["apiVersion"] == "ray.io/v1"
        assert isinstance(job["metadata"]["name"], str) and job["metadata"]["name"]
        spec = job["spec"]
        assert set(spec) <= RAYJOB_FIELDS, set(spec) - RAYJOB_FIELDS
        args = shlex.split(spec["entrypoint"])
        assert args[:2] == ["babelray", command]
        assert _config_path(spec["entrypoint"]) == "configs/qwen3-embedding-4b.yaml"
        # The existing cluster, by name; none created, none deleted.
        assert spec["clusterSelector"] == {"ray.io/cluster": raycluster["metadata"]["name"]}
        assert "rayClusterSpec" not in spec and not spec.get("shutdownAfterJobFinishes", False)
        assert spec["entrypointNumCpus"] == 1  # the driver commits to the table
        assert spec["backoffLimit"] == 0
        assert spec["submitterConfig"]["backoffLimit"] == 0
        assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    # reembed must not overlap an ingest of the same table; its manifest says so, and why.
    reembed = RAYJOBS["reembed"].read_text()
    assert rayjobs["run"]["metadata"]["name"] in reembed and "_locks/" in reembed


def test_rayjob_configs_exist_and_load(rayjobs):
    for job in rayjobs.values():
        path = REPO / _config_path(job["spec"]["entrypoint"])
        assert path.is_file(), path
        load_config(path)


def test_dockerfile():
    text = DOCKERFILE.read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    runs = [i for i, line in enumerate(instructions) if line.startswith("RUN ")]
    torch = [i for i in runs if re.search(r"pip install .*torch==", instructions[i])]
    project = [i for i in runs if re.search(r"pip install [^\n]*\s\.(\s|$)", instructions[i])]
    assert torch and project and torch[0] < project[0], "torch (CUDA build) goes in before the project"
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}, "the image runs as a non-root user"
    (workdir,) = [line.split()[1] for line in instructions if line.startswith("WORKDIR ")]
    copies = {line.split()[-1].rstrip("/"): line.split()[-2].rstrip("/")
              for line in instructions if line.startswith("COPY ") and not line.split()[-1].endswith("./")}
    packages = re.search(r"^packages\s*=\s*\[(.*?)\]", (REPO / "pyproject.toml").read_text(), re.M | re.S)
    top_level = {name.split(".")[0] for name in re.findall(r'"([^"]+)"', packages.group(1))}
    for folder in top_level | {"configs"}:
        # Copied to WORKDIR/<folder>: the package installs, and configs/... resolves from WORKDIR.
        assert copies.get(folder) == folder, f"{folder}/ is not copied to {workdir}/{folder}"
    assert re.search(r"^COPY .*\bpyproject\.toml\b.*\./$", text, re.M)
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git"} <= set(ignore)


def test_ray_up_config_is_valid(ray_up):
    jsonschema = pytest.importorskip("jsonschema")
    ray_spec = importlib.util.find_spec("ray")
    assert ray_spec is not None, "Ray is not installed in this environment"
    ray_dir = Path(ray_spec.submodule_search_locations[0])
    schema = json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(ray_up, schema)
    # And Ray's own check, after `ray up` fills in the provider's defaults.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(ray_up))


def test_ray_up_cluster_shape(ray_up, production_config):
    types = ray_up["available_node_types"]
    assert ray_up["provider"]["type"] == "aws"
    head = types[ray_up["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no pipeline work on the head
    workers = {name: t for name, t in types.items() if name != ray_up["head_node_type"]}
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) > 0]
    cpu = [t for t in workers.values() if t["resources"].get("GPU", 0) == 0]
    assert len(gpu) == 1 and cpu
    assert gpu[0]["min_workers"] == 0
    for stage, resources in _gpu_stages(production_config).items():
        assert _gpus(resources) <= gpu[0]["resources"]["GPU"], stage
        assert resources.num_cpus <= gpu[0]["resources"]["CPU"], stage
    for node_type in cpu:
        assert sum(r.num_cpus for r in _cpu_stages(production_config).values()) + 1 <= node_type["resources"]["CPU"]


def test_ray_up_token_auth_and_metrics(ray_up):
    home = f"/home/{ray_up['auth']['ssh_user']}"
    starts = {"head": " ".join(ray_up["head_start_ray_commands"]),
              "worker": " ".join(ray_up["worker_start_ray_commands"])}
    paths = set()
    for role, command in starts.items():
        assert "RAY_AUTH_MODE=token" in command, role
        found = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", command)
        assert found, role
        paths.add(found.group(1).replace("$HOME", home).replace("~", home))
        assert f"--metrics-export-port={METRICS_PORT}" in command, role
    (token_path,) = paths
    # The token file is copied from the workstation, from outside the repository.
    local = ray_up["file_mounts"][token_path]
    assert local.startswith("~") or not Path(local).resolve().is_relative_to(REPO), local
    # The project is synced, and Ray starts in it so that configs/... resolves for drivers.
    project = [remote for remote, source in ray_up["file_mounts"].items() if source in {".", "./"}]
    assert len(project) == 1
    remote_dir = project[0].replace(home, "~")
    for role, command in starts.items():
        assert re.search(rf"cd {re.escape(remote_dir)}\s*&&", command), role
    setup = ray_up["setup_commands"]
    torch = next(i for i, c in enumerate(setup) if "torch==" in c)
    install = next(i for i, c in enumerate(setup) if re.search(r"pip install .*\s\.\s", c + " "))
    assert torch < install, "torch (CUDA build) goes in before the project"


def test_podmonitor_scrapes_the_metrics_port():
    monitor = _one(_load(PODMONITOR), "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]
    keys = set(selector.get("matchLabels", {})) | {e["key"] for e in selector.get("matchExpressions", [])}
    assert "ray.io/cluster" in keys
    ports = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    assert ports == {"metrics"}  # the port name every Ray container declares (checked above)


# --------------------------------------------------------------------------------------------
# Grafana dashboard

def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[tuple[str | None, dict]]:
    """(row title, panel) for every non-row panel, collapsed rows included."""
    out, row = [], None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            out += [(row, child) for child in panel.get("panels", [])]
        else:
            out.append((row, panel))
    return out


def _exprs(dashboard: dict) -> list[str]:
    return [target["expr"] for _, panel in _panels(dashboard) for target in panel["targets"]]


def test_dashboard_structure():
    dashboard = _dashboard()
    assert dashboard["uid"] == "babelray"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    rows = {}
    for row, panel in _panels(dashboard):
        rows.setdefault(row, []).append(panel)
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert {"babelray pipeline", "Ray Data", "Drift"} <= set(rows)
    assert all("ray_babelray_" in t["expr"] for p in rows["babelray pipeline"] for t in p["targets"])
    assert all("ray_data_" in t["expr"] for p in rows["Ray Data"] for t in p["targets"])
    assert all("ray_babelray_drift_" in t["expr"] for p in rows["Drift"] for t in p["targets"])
    assert len({p["id"] for _, p in _panels(dashboard)}) == len(_panels(dashboard))


def test_dashboard_queries_are_well_formed():
    for expr in _exprs(_dashboard()):
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), expr
        for metric in re.findall(r"ray_babelray_\w+", expr):
            # Every series carries Ray's per-process labels: aggregate them away.
            assert re.search(r"\b(sum|max|min|avg) by \(", expr), expr
            if metric.endswith(("_total", "_bucket", "_sum", "_count")):
                assert re.search(rf"\b(rate|increase)\(\s*{metric}\{{", expr), f"counter {metric} in {expr}"
        if "histogram_quantile" in expr:
            assert re.search(r"by \([^)]*\ble\b", expr), expr


def test_dashboard_ray_data_metrics_exist_in_ray():
    ray_spec = importlib.util.find_spec("ray")
    if ray_spec is None:
        pytest.skip("Ray is not installed here")
    panels = Path(ray_spec.submodule_search_locations[0]) / RAY_DATA_PANELS
    known = set(re.findall(r"ray_data_\w+", panels.read_text()))
    used = {name for expr in _exprs(_dashboard()) for name in re.findall(r"ray_data_\w+", expr)}
    assert used and used <= known, f"not Ray Data metrics of this Ray: {sorted(used - known)}"


def test_dashboard_babelray_metrics_are_exported():
    from babelray.metrics import PROMETHEUS_NAMES

    used = {re.sub(r"_(bucket|sum|count)$", "", name)
            for expr in _exprs(_dashboard()) for name in re.findall(r"ray_babelray_\w+", expr)}
    variables = " ".join(json.dumps(v.get("query", "")) for v in _dashboard()["templating"]["list"])
    used |= {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"ray_babelray_\w+", variables)}
    assert used, "the dashboard queries no babelray metric"
    assert used <= set(PROMETHEUS_NAMES), f"not exported by babelray/metrics.py: {sorted(used - set(PROMETHEUS_NAMES))}"
