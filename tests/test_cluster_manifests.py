"""The scheduling manifests of the drift job (cluster/): they parse, say what they must, and agree.

cluster/drift-raycronjob.yaml (KubeRay >= 1.6 RayCronJob) and cluster/drift-cronjob.yaml
(a Kubernetes CronJob creating a RayJob, for KubeRay 1.0-1.5) must run the same RayJob:
the test compares the two specs. YAML only; no Ray, no cluster, no network.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
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
