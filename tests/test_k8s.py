"""deploy/k8s: the kustomization's manifests validate against pinned Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail) and agree with the Dockerfile, the
compose file, the service's settings and docs/DEPLOYMENT.md. No cluster is needed: the
kustomization is rendered here from its ``resources`` list (and compared with
``kubectl kustomize`` where kubectl is installed)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from cli_help import assert_real_command
from fastapi.testclient import TestClient
from redis_server import free_port

from service.app import create_app
from service.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

# The oldest release with every field used here (CronJob.spec.timeZone is GA in 1.27) and a
# current one: both are pinned so a new kubernetes-validate cannot move the goalposts.
KUBERNETES_VERSIONS = ["1.27.0", "1.35.0"]
# What this renderer understands; anything else in kustomization.yaml must be taught here.
KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources"}
# Environment variables the API reads that are not Settings fields.
NON_SETTINGS_ENV = {"PROMETHEUS_MULTIPROC_DIR", "UVICORN_LOOP"}


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def render() -> list[dict]:
    """Every object of the kustomization, in its ``resources`` order."""
    docs = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


OBJECTS = render()


def one(kind: str, name: str | None = None) -> dict:
    found = [o for o in OBJECTS if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(pod_spec: dict, name: str) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


API_POD = one("Deployment")["spec"]["template"]["spec"]
API = container(API_POD, "api")
TRAINER_POD = one("Job")["spec"]["template"]["spec"]
TRAINER = container(TRAINER_POD, "trainer")


def dockerfile(instruction: str) -> str:
    """The argument of the last ``instruction`` line in the final stage."""
    final = re.split(r"(?m)^FROM ", DOCKERFILE)[-1]
    return re.findall(rf"(?m)^{instruction} (.+)$", final)[-1]


def named_port(pod_container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in pod_container["ports"] if p["name"] == port)


def api_env() -> dict[str, dict]:
    """Every variable the API container gets: ConfigMaps via envFrom, then ``env``."""
    env: dict[str, dict] = {}
    for source in API.get("envFrom", []):
        cm = one("ConfigMap", source["configMapRef"]["name"])
        env.update({k: {"value": v} for k, v in cm["data"].items()})
    env.update({e["name"]: e for e in API.get("env", [])})
    return env


# -- the kustomization --------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_nothing_this_renderer_ignores():
    k = kustomization()
    assert k["kind"] == "Kustomization" and set(k) <= KUSTOMIZE_KEYS, set(k) - KUSTOMIZE_KEYS
    on_disk = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert sorted(k["resources"]) == sorted(on_disk)


def by_name(objects: list[dict]) -> list[dict]:
    return sorted(objects, key=lambda o: (o["kind"], o["metadata"]["name"]))


def kubectl_kustomize(directory: Path) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return list(yaml.safe_load_all(out.stdout))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_render_matches_kubectl_kustomize():
    assert by_name(kubectl_kustomize(K8S)) == by_name(OBJECTS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(version):
    for obj in OBJECTS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} on {version}: {path}: {e.message}"
            )


def test_the_pieces_docs_deployment_promises():
    kinds = {(o["apiVersion"], o["kind"]) for o in OBJECTS}
    assert {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
        ("batch/v1", "Job"),
        ("batch/v1", "CronJob"),
        ("v1", "PersistentVolumeClaim"),
        ("v1", "ConfigMap"),
    } == kinds
    # secrets and Redis are the operator's: no Secret object, no second image
    pods = [API_POD, TRAINER_POD]
    assert {c["image"] for pod in pods for c in pod["containers"]} == {API["image"]}


def test_docs_and_readme_name_every_manifest():
    deployment = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    section = deployment.split("## Kubernetes", 1)[1].split("\n## ", 1)[0]
    for name in kustomization()["resources"]:
        assert f"deploy/k8s/{name}" in section, f"docs/DEPLOYMENT.md does not mention {name}"
    for obj in OBJECTS:
        assert f"`{obj['kind']}`" in section, f"docs/DEPLOYMENT.md does not mention {obj['kind']}"
    readme = (ROOT / "README.md").read_text()
    assert "kubectl apply -k deploy/k8s" in readme and "docker compose up" in readme


ITEM_API = ROOT / "deploy" / "overlays" / "item-api"


def pointer(doc: dict, path: str) -> tuple[dict | list, str | int]:
    """The parent and key of a JSON pointer (RFC 6901) in ``doc``."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc, int(last) if isinstance(doc, list) else last


def render_overlay(directory: Path) -> list[dict]:
    """An overlay of the base: its ``resources`` (the base) with its JSON 6902 ``patches``
    applied; the ``test`` and ``replace`` operations are all it uses."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(k) <= KUSTOMIZE_KEYS | {"patches"}, set(k)
    assert [(directory / r).resolve() for r in k["resources"]] == [K8S.resolve()]
    objects = copy.deepcopy(OBJECTS)
    for patch in k["patches"]:
        target = patch["target"]
        (obj,) = [
            o
            for o in objects
            if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
        ]
        for op in yaml.safe_load(patch["patch"]):
            parent, key = pointer(obj, op["path"])
            if op["op"] == "test":
                assert parent[key] == op["value"], f"{op['path']} is {parent[key]!r}"
            else:
                assert op["op"] == "replace", op
                parent[key]  # replace needs an existing member: KeyError / IndexError if not
                parent[key] = op["value"]
    return objects


def test_item_api_overlay_only_makes_the_bundle_writable_in_the_api_pods():
    """The base mounts the bundle read-only (the item API answers 409 there); the
    documented overlay changes exactly that mount and still validates."""
    objects = render_overlay(ITEM_API)
    api_pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container(api_pod, "api")["volumeMounts"]}
    artifacts = Path(api_env()["ARTIFACTS_DIR"]["value"]).parent.as_posix()
    assert mounts[artifacts]["readOnly"] is False
    changed = [(a, b) for a, b in zip(OBJECTS, objects, strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0]["kind"] == "Deployment"
    base_api = copy.deepcopy(API)
    for mount in base_api["volumeMounts"]:
        if mount["mountPath"] == artifacts:
            mount["readOnly"] = False
    assert container(api_pod, "api") == base_api
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)
    deployment = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    assert "kubectl apply -k deploy/overlays/item-api" in deployment


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_overlay_render_matches_kubectl_kustomize():
    assert by_name(kubectl_kustomize(ITEM_API)) == by_name(render_overlay(ITEM_API))


# -- the API against the image and the service --------------------------------------


def test_api_runs_the_image_command_on_its_exposed_port():
    assert API["image"] == COMPOSE["services"]["api"]["image"] == COMPOSE["x-app"]["image"]
    cmd = json.loads(dockerfile("CMD"))
    assert API["command"][: len(cmd)] == cmd, "the Dockerfile's CMD plus extra flags"
    assert_real_command(API["command"])
    port = int(dockerfile("EXPOSE"))
    assert cmd[cmd.index("--port") + 1] == str(port)
    assert [p["containerPort"] for p in API["ports"]] == [port]


def test_workers_match_the_cpu_request_and_one_thread_each():
    workers = int(API["command"][API["command"].index("--workers") + 1])
    assert str(workers) == API["resources"]["requests"]["cpu"] == API["resources"]["limits"]["cpu"]
    env = api_env()
    assert env["TORCH_THREADS"]["value"] == env["FAISS_THREADS"]["value"] == "1"
    assert API["resources"]["requests"]["memory"] == API["resources"]["limits"]["memory"]


def test_probes_hit_the_dockerfile_and_compose_health_paths_on_the_container_port():
    port = int(dockerfile("EXPOSE"))
    live, ready, start = API["livenessProbe"], API["readinessProbe"], API["startupProbe"]
    health = re.search(r"(?s)\nHEALTHCHECK .*?https?://[^/]+(/\w+)", DOCKERFILE).group(1)
    compose = re.search(
        r"https?://[^/]+(/\w+)", " ".join(COMPOSE["services"]["api"]["healthcheck"]["test"])
    )
    assert live["httpGet"]["path"] == start["httpGet"]["path"] == health == "/healthz"
    assert ready["httpGet"]["path"] == compose.group(1) == "/readyz"
    for probe in (live, ready, start):
        assert named_port(API, probe["httpGet"]["port"]) == port


def test_probe_paths_answer_without_a_key_and_readiness_waits_for_a_bundle(tmp_path):
    """The pod starts before the first trainer run has written a bundle: liveness must pass
    (no restart loop), readiness must not (no traffic), and kubelet sends no API key."""
    settings = Settings(artifacts_dir=str(tmp_path / "current"), api_key="k", reload_poll_s=0)
    with TestClient(create_app(settings)) as client:
        assert client.get(API["livenessProbe"]["httpGet"]["path"]).status_code == 200
        ready = client.get(API["readinessProbe"]["httpGet"]["path"])
        assert ready.status_code == 503 and "no model loaded" in ready.json()["reason"]
        assert client.get("/metrics").status_code == 401  # the rest does need the key


def test_env_names_are_service_settings():
    fields = {name.upper() for name in Settings.model_fields}
    env = api_env()
    assert set(env) - fields - NON_SETTINGS_ENV == set()
    assert env["ARTIFACTS_DIR"]["value"] == re.search(r"ARTIFACTS_DIR=(\S+)", DOCKERFILE).group(1)


def test_keys_and_redis_url_come_from_one_secret():
    env = api_env()
    refs = {
        name: env[name]["valueFrom"]["secretKeyRef"]
        for name in ("API_KEY", "ADMIN_API_KEY", "REDIS_URL")
    }
    assert {r["name"] for r in refs.values()} == {"towerrec"}
    assert {name: r["key"] for name, r in refs.items()} == {n: n for n in refs}
    assert not refs["API_KEY"].get("optional") and not refs["REDIS_URL"].get("optional")
    assert "value" not in env["API_KEY"] and "value" not in env["REDIS_URL"]


def test_api_runs_as_the_image_user_on_a_read_only_root():
    uid = int(re.search(r"useradd .*--uid (\d+)", DOCKERFILE).group(1))
    assert API_POD["securityContext"]["runAsUser"] == uid
    assert API_POD["securityContext"]["runAsNonRoot"] is True
    assert API["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in API["volumeMounts"]}
    assert "/tmp" in mounts  # PROMETHEUS_MULTIPROC_DIR for --workers > 1 lives there
    artifacts = Path(api_env()["ARTIFACTS_DIR"]["value"]).parent.as_posix()
    assert mounts[artifacts]["readOnly"] is True


READ_ONLY_ROOT = """
mount --bind "$BUNDLE" "$MNT" && mount -o remount,bind,ro "$MNT"  # the bundle volume
mount --bind /tmp "$HOLD"                    # the host's /tmp, where the code may live (CI)
mount -t tmpfs -o size=256m tmpfs /tmp                             # the /tmp emptyDir
for p in $KEEP; do  # the checkout and venv, when under /tmp: back in place, read-only
  mkdir -p "$p" && mount --bind "$HOLD${p#/tmp}" "$p" && mount -o remount,bind,ro "$p"
done
mount --bind / / && mount -o remount,bind,ro /                     # readOnlyRootFilesystem
touch /probe 2>/dev/null && { echo "root is writable" >&2; exit 3; }
exec "$@"
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a read-only root needs a mount namespace: root and util-linux's unshare",
)
def test_api_container_serves_from_a_read_only_root(bundle_root):
    """The API container as the manifest runs it (command, ConfigMap env, workers) with
    what its securityContext and volumes leave writable: /tmp only, the bundle read-only.
    Probes answer without a key, /recommend and the workers' merged /metrics with one."""
    writable = [m["mountPath"] for m in API["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/tmp"], "READ_ONLY_ROOT provides a writable /tmp and nothing else"
    assert API["securityContext"]["readOnlyRootFilesystem"] is True
    mnt = Path(tempfile.mkdtemp(prefix="towerrec-ro-", dir="/dev/shm"))  # outside / and /tmp
    port = free_port()
    cmd = list(API["command"])
    cmd[cmd.index("--port") + 1], cmd[cmd.index("--host") + 1] = str(port), "127.0.0.1"
    env = {k: v["value"] for k, v in api_env().items() if "value" in v}
    env |= {"ARTIFACTS_DIR": str(mnt / "current"), "API_KEY": "k8s-test-key"}
    env |= {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "BUNDLE": str(bundle_root)}
    env |= {"MNT": str(mnt), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    code = {ROOT.resolve(), Path(sys.prefix).resolve()}  # the image's code, read-only
    env |= {"HOLD": tempfile.mkdtemp(prefix="towerrec-host-tmp-", dir="/dev/shm")}
    env |= {"KEEP": " ".join(sorted(str(p) for p in code if p.is_relative_to("/tmp")))}
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY_ROOT, "sh"]
        + cmd,
        cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url, key = f"http://127.0.0.1:{port}", {"X-API-Key": "k8s-test-key"}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "not ready in 120 s"
            try:
                if httpx.get(url + API["readinessProbe"]["httpGet"]["path"]).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert httpx.get(url + API["livenessProbe"]["httpGet"]["path"]).status_code == 200
        body = {"recent_items": ["1", "2", "3"], "k": 5}
        answer = httpx.post(url + "/recommend", json=body, headers=key, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 5
        metrics = httpx.get(url + "/metrics", headers=key, timeout=30)
        assert metrics.status_code == 200 and "towerrec" in metrics.text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        mnt.rmdir()
        os.rmdir(env["HOLD"])


# -- service, autoscaler, disruption budget ------------------------------------------


def test_service_hpa_and_pdb_point_at_the_api_pods():
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert one("Deployment")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = one("Service")["spec"]
    assert svc["selector"].items() <= labels.items()
    assert named_port(API, svc["ports"][0]["targetPort"]) == int(dockerfile("EXPOSE"))
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["scaleTargetRef"]["name"] == one("Deployment")["metadata"]["name"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and "cpu" in API["resources"]["requests"]
    assert hpa["minReplicas"] > one("PodDisruptionBudget")["spec"]["minAvailable"] >= 1


# -- trainer ------------------------------------------------------------------------


def test_job_and_cronjob_run_the_same_pod_one_at_a_time():
    cron = one("CronJob")["spec"]
    assert cron["jobTemplate"]["spec"]["template"]["spec"] == TRAINER_POD
    assert cron["concurrencyPolicy"] == "Forbid"
    assert len(cron["schedule"].split()) == 5


def test_trainer_runs_the_compose_trainer_command():
    assert TRAINER["command"] == COMPOSE["services"]["trainer"]["command"]
    assert TRAINER["image"] == API["image"]
    assert_real_command(TRAINER["command"])


def test_trainer_writes_where_the_api_reads():
    def mount_of(pod: dict, cont: dict, path: str) -> tuple[str, str]:
        m = next(m for m in cont["volumeMounts"] if m["mountPath"] == path)
        vol = next(v for v in pod["volumes"] if v["name"] == m["name"])
        return vol["persistentVolumeClaim"]["claimName"], m.get("subPath", "")

    out = TRAINER["command"][TRAINER["command"].index("--out") + 1]
    artifacts = Path(api_env()["ARTIFACTS_DIR"]["value"])
    assert artifacts.name == "current" and artifacts.parent.as_posix() == out
    claim = one("PersistentVolumeClaim")
    assert mount_of(TRAINER_POD, TRAINER, out) == mount_of(API_POD, API, out)
    assert mount_of(API_POD, API, out)[0] == claim["metadata"]["name"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    assert not next(m for m in TRAINER["volumeMounts"] if m["mountPath"] == out).get("readOnly")
