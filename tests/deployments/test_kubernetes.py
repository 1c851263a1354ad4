"""`bertflow deploy --pool-type kubernetes` against a real Prefect server (test_deploy's `server`): the pool and
the deployments read back through the client, and each run's Job manifest rendered as the Kubernetes worker
renders it (prefect-kubernetes' own `resolve_for_flow_run`) and checked against the Kubernetes API's models.
No cluster here: nothing is applied to one."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import run_cli
from tests.deployments import test_deploy
from tests.deployments.service import prefect_settings
from tests.deployments.test_deploy import AUTH, prefect_client

server = test_deploy.server  # the fixture: a Prefect server (basic auth on) for this module

IMAGE = "registry.example.com/bertflow:0.3.0"
SECRET = "bertflow-creds"
GPU = "nvidia.com/gpu"
# What a deployer's shell holds: none of it may reach the pool, the deployments, a manifest or the output.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAK8SDONOTLOG",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-do-not-log",
    "HF_TOKEN": "hf_token_do_not_log",
}
SECRET_VALUES = [*CREDENTIALS.values(), AUTH, AUTH.split(":")[1]]
K8S = (
    "--pool-type", "kubernetes", "--image", IMAGE, "--namespace", "ml", "--secret", SECRET, "--cpu", "4",
    "--memory", "16Gi", "--node-selector", "nvidia.com/gpu.present=true", "--toleration", "nvidia.com/gpu:NoSchedule",
    "--source-template", "s3://lake/raw/dt={date}/", "--dest-template", "s3://lake/embeddings/dt={date}/",
)  # fmt: skip
PARENTS = ("embed-dataset/embed-nightly", "embed-dataset/embed-adhoc", "backfill/backfill")
SHARD = "embed-shard/embed-shard"


def deploy(url: str, *args: str):
    return run_cli("deploy", *args, env={"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": AUTH, **CREDENTIALS})


def assert_no_secret(text: str) -> None:
    for value in SECRET_VALUES:
        assert value not in text


def pools(url: str) -> dict:
    with prefect_client(url) as c:
        return {p.name: p for p in c.read_work_pools()}


def render(url: str, deployment: str, parameters: dict) -> dict:
    """The Job manifest the Kubernetes worker would create for a new run of `deployment`: the worker's own code,
    run with a worker's environment (the server's URL and its credential)."""
    from prefect import get_client
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async def resolve() -> dict:
        async with get_client() as c:
            d = await c.read_deployment_by_name(deployment)
            run = await c.create_flow_run_from_deployment(d.id, parameters=parameters)
            try:
                config = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
                    run, client=c, work_pool=await c.read_work_pool(d.work_pool_name), worker_name="w", deployment=d
                )
            finally:
                await c.delete_flow_run(run.id)
        return config.job_manifest

    with prefect_settings(url, AUTH):
        return asyncio.run(resolve())


# prefect-kubernetes' own check of a job manifest requires these in the pod spec, which has no such fields (they
# are the Job's, and default to 1 there): the API server drops them with a warning. Every other field must hold.
QUIRKS = {".spec.template.spec.parallelism", ".spec.template.spec.completions"}


def validated(manifest: dict) -> dict:
    """The manifest as the Kubernetes API's models read it: a required field missing fails (client-side validation
    on), and so does a field of the wrong type or an unknown one (what the models write back must be the manifest)."""
    from kubernetes_asyncio.client import ApiClient, Configuration

    assert Configuration.get_default_copy().client_side_validation

    async def round_trip():
        async with ApiClient() as api:
            return api.sanitize_for_serialization(api._ApiClient__deserialize(manifest, "V1Job"))

    def normal(x):  # Quantities and int-or-strings read back as strings: compare numbers as strings
        return json.loads(json.dumps(x), parse_int=str, parse_float=str)

    lost = [
        d for d in differences(normal(manifest), normal(asyncio.run(round_trip()))) if d.split(":")[0] not in QUIRKS
    ]
    assert not lost, f"not as the Kubernetes models read it: {lost}"
    return manifest


def differences(a, b, path: str = "") -> list[str]:
    """Paths where a and b differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys()) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def container(manifest: dict) -> dict:
    [c] = manifest["spec"]["template"]["spec"]["containers"]
    return c


def test_kubernetes_pool_deployed_twice_one_gpu_per_shard_job_no_secret_anywhere(server):
    first = deploy(server, "--pool", "k8s", *K8S)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "prefect worker start --pool k8s --type kubernetes" in " ".join(first.stdout.split())
    before = pools(server)["k8s"]
    with prefect_client(server) as c:
        deployments = {name: c.read_deployment_by_name(name) for name in (*PARENTS, SHARD)}
    again = deploy(server, "--pool", "k8s", *K8S)
    bare = deploy(server, "--pool", "k8s", "--pool-type", "kubernetes")  # options left out keep the pool's
    for r in (again, bare):
        assert r.returncode == 0, r.stdout + r.stderr
        assert "created" not in r.stdout and "updated" not in r.stdout
        assert r.stdout.count("unchanged") == 9  # pool, 2 queues, 4 deployments, limit, automation
    assert [p for p in pools(server).values() if p.name == "k8s"] == [before]  # one pool, as it was
    with prefect_client(server) as c:
        assert {name: c.read_deployment_by_name(name).updated for name in deployments} == {
            name: d.updated for name, d in deployments.items()
        }

    assert before.type == "kubernetes"
    variables = before.base_job_template["variables"]["properties"]
    assert variables["gpus"]["default"] == 1 and variables["image"]["default"] == IMAGE
    for name, d in deployments.items():
        assert d.work_pool_name == "k8s"
        assert d.job_variables == ({} if name == SHARD else {"gpus": 0, "node_selector": {}, "tolerations": []})

    shard = validated(render(server, SHARD, {}))
    c = container(shard)
    assert c["image"] == IMAGE and shard["metadata"]["namespace"] == "ml"
    assert int(c["resources"]["limits"][GPU]) == 1 and int(c["resources"]["requests"][GPU]) == 1
    assert c["resources"]["requests"]["cpu"] == "4" and c["resources"]["requests"]["memory"] == "16Gi"
    pod = shard["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    env = {e["name"]: e for e in c["env"]}
    assert env["BERTFLOW_GPU_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}  # GPUs per node
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]["value"] == "30"  # runs send heartbeats
    assert env["PREFECT_API_URL"]["value"] == server  # the worker's own
    # The worker's credential is not passed on as a value: the job reads every credential from the Secret.
    assert "PREFECT_API_AUTH_STRING" not in env and c["envFrom"] == [{"secretRef": {"name": SECRET}}]
    assert all("value" not in e for e in c["env"] if "KEY" in e["name"] or "TOKEN" in e["name"])

    # A parent waits for its shards: no GPU, and any node.
    parent = validated(render(server, PARENTS[1], {"source": "s3://lake/raw/", "dest": "s3://lake/out/"}))
    p = container(parent)
    assert int(p["resources"]["limits"][GPU]) == 0 and int(p["resources"]["requests"][GPU]) == 0
    assert parent["spec"]["template"]["spec"]["nodeSelector"] == {}
    assert parent["spec"]["template"]["spec"]["tolerations"] == []
    assert p["image"] == IMAGE and p["envFrom"] == [{"secretRef": {"name": SECRET}}]

    for text in (
        first.stdout + first.stderr + again.stdout + again.stderr + bare.stdout + bare.stderr,
        before.model_dump_json(),
        *(d.model_dump_json() for d in deployments.values()),
        json.dumps(shard),
        json.dumps(parent),
    ):
        assert_no_secret(text)


def test_a_changed_option_or_job_variable_is_updated(server):
    r = deploy(server, "--pool", "k8s", *K8S)
    assert r.returncode == 0, r.stderr
    more = deploy(server, "--pool", "k8s", "--pool-type", "kubernetes", "--gpus-per-job", "2")
    assert more.returncode == 0, more.stderr
    assert more.stdout.count("updated") == 1 and more.stdout.count("unchanged") == 8  # the pool only
    assert int(container(validated(render(server, SHARD, {})))["resources"]["limits"][GPU]) == 2
    # Someone gave a parent a GPU in the UI: deploy puts it back.
    from prefect.client.schemas.actions import DeploymentUpdate

    with prefect_client(server) as c:
        adhoc = c.read_deployment_by_name(PARENTS[1])
        c.update_deployment(adhoc.id, DeploymentUpdate(job_variables={"gpus": 1}))
    fixed = deploy(server, "--pool", "k8s", "--pool-type", "kubernetes")
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.count("updated") == 1 and fixed.stdout.count("unchanged") == 8
    with prefect_client(server) as c:
        assert c.read_deployment_by_name(PARENTS[1]).job_variables["gpus"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("--pool-type", "kubernetes"), "--pool-type kubernetes needs --image"),
        (("--pool-type", "docker"), "--pool-type 'docker': give process or kubernetes"),
        (("--image", IMAGE, "--gpus-per-job", "2"), "--image, --gpus-per-job: only for --pool-type kubernetes"),
        (("--pool-type", "kubernetes", "--image", IMAGE, "--gpus-per-job", "0"), "--gpus-per-job 0: give 1 or more"),
        (("--pool-type", "kubernetes", "--image", IMAGE, "--node-selector", "gpu"), "--node-selector 'gpu': give"),
        (("--pool-type", "kubernetes", "--image", IMAGE, "--toleration", "gpu:Never"), "--toleration 'gpu:Never'"),
        (("--pool-type", "kubernetes", "--image", IMAGE, "--namespace", "ML_team"), "--namespace 'ML_team'"),
        (("--pool-type", "kubernetes", "--image", IMAGE, "--memory", "lots"), "--memory 'lots'"),
        (("--pool-type", "kubernetes", "--image", "my image"), "--image 'my image'"),
    ],
)
def test_bad_kubernetes_input_is_one_line_and_creates_nothing(server, args, message):
    r = deploy(server, "--pool", "fresh", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "fresh" not in pools(server)


def test_a_pool_of_the_other_type_is_refused(server):
    assert deploy(server, "--pool", "proc").returncode == 0
    assert deploy(server, "--pool", "k8s", *K8S).returncode == 0
    before = pools(server)
    r = deploy(server, "--pool", "proc", "--pool-type", "kubernetes", "--image", IMAGE)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--pool proc: that work pool is of type 'process', not 'kubernetes'; give --pool-type process" in r.stderr
    r = deploy(server, "--pool", "k8s")
    assert r.returncode == 2 and "that work pool is of type 'kubernetes', not 'process'" in r.stderr
    assert pools(server) == before


def test_the_manifest_check_fails_a_wrong_manifest():
    good = {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}
    validated(good)
    wrong = [
        {**good, "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}},  # a container needs a name
        {**good, "spec": {"backoffLimit": "six", "template": good["spec"]["template"]}},  # an int field
        {**good, "spec": {"template": {"spec": {"containers": [{"name": "c"}], "tolerations": {"key": "x"}}}}},
        {**good, "spec": {"template": {"spec": {"containers": [{"name": "c"}], "nodeSelectors": {"a": "b"}}}}},
    ]
    for manifest in wrong:
        with pytest.raises((ValueError, TypeError, AssertionError)):
            validated(manifest)
