"""The Kubernetes work pool of `bertflow deploy --pool-type kubernetes`: a worker in the cluster starts one Job per run.

The base job template is prefect-kubernetes' default, plus:

- variables `gpus` (the container's `nvidia.com/gpu` request and limit, default 1), `node_selector` and
  `tolerations` (the pod's: GPU nodes and their taints) and `secret` (the Kubernetes Secret whose keys
  become the container's environment); `image`, `namespace`, `cpu_request` and `memory_request` are
  prefect-kubernetes' own. The options of deploy set their defaults, which every shard job gets.
- Parent runs (embed-nightly, embed-adhoc, backfill) only wait for their shards: their deployments set
  the job variables `PARENT_JOB_VARIABLES` (no GPU, no node selector, no tolerations), so they never hold
  a GPU nor wait for a GPU node.
- `BERTFLOW_GPU_HOST` is the node's name (downward API, `spec.nodeName`): pods on one node share its GPUs,
  so the GPU limit counts per node. `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` turns heartbeats on.
- Credentials are never in the template, the deployments or a manifest: the container takes AWS_*,
  PREFECT_API_AUTH_STRING, HF_TOKEN from the Secret (`envFrom: secretRef`). The worker passes its own
  Prefect settings to each job (PREFECT_API_URL, but also its credential, as a plain value): the template's
  env sets those credential settings to null, which Prefect drops, so the Secret's values are the ones used.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from bertflow.errors import InputError

POOL_TYPE = "kubernetes"
DEFAULT_SECRET = "bertflow-credentials"
GPU = "nvidia.com/gpu"
# Prefect settings a worker would copy into each job as plain values: null drops them from the job's env.
WORKER_CREDENTIALS = (
    "PREFECT_API_AUTH_STRING",
    "PREFECT_API_KEY",
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_PASSWORD",
)
PARENT_JOB_VARIABLES: dict[str, Any] = {"gpus": 0, "node_selector": {}, "tolerations": []}
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

VARIABLES: dict[str, dict[str, Any]] = {
    "gpus": {
        "title": "GPUs",
        "description": f"{GPU} each job requests; bertflow's parent deployments set 0",
        "type": "integer",
        "minimum": 0,
        "default": 1,
    },
    "node_selector": {
        "title": "Node selector",
        "description": "Labels a node needs to run the job (GPU nodes); bertflow's parent deployments clear it",
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": {},
    },
    "tolerations": {
        "title": "Tolerations",
        "description": "Taints of nodes the job may run on (e.g. the GPU nodes' nvidia.com/gpu:NoSchedule)",
        "type": "array",
        "items": {"type": "object"},
        "default": [],
    },
    "secret": {
        "title": "Credentials Secret",
        "description": "Kubernetes Secret in the namespace whose keys become the job's environment "
        "(AWS_*, PREFECT_API_AUTH_STRING, HF_TOKEN)",
        "type": "string",
        "default": DEFAULT_SECRET,
    },
}

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
_LABEL_KEY = re.compile(rf"({_DNS_SUBDOMAIN}/)?{_NAME}")
_LABEL_VALUE = re.compile(rf"({_NAME})?")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_QUANTITY = re.compile(r"\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")


@dataclass(frozen=True)
class KubernetesOptions:
    """deploy's options for a Kubernetes pool, as given; None keeps what the pool has (or the default)."""

    image: str | None = None
    namespace: str | None = None
    gpus_per_job: int | None = None
    node_selector: list[str] | None = None  # key=value; [""] clears
    tolerations: list[str] | None = None  # key[=value][:Effect]; [""] clears
    secret: str | None = None
    cpu: str | None = None
    memory: str | None = None

    def given(self) -> list[str]:
        """The options given, as flags."""
        flag = {"tolerations": "--toleration"}
        return [flag.get(k, "--" + k.replace("_", "-")) for k, v in vars(self).items() if v is not None]

    def defaults(self) -> dict[str, Any]:
        """The template variables' defaults these options set; refuses a bad one before anything is created."""
        out: dict[str, Any] = {}
        if self.image is not None:
            if not self.image or re.search(r"\s", self.image):
                raise InputError(
                    f"--image {self.image!r}: give an image reference, e.g. registry.example.com/bertflow:0.3.0"
                )
            out["image"] = self.image
        if self.namespace is not None:
            out["namespace"] = _checked(self.namespace, _NAMESPACE, "--namespace", "a Kubernetes namespace, e.g. ml")
        if self.gpus_per_job is not None:
            if self.gpus_per_job < 1:
                raise InputError(f"--gpus-per-job {self.gpus_per_job}: give 1 or more")
            out["gpus"] = self.gpus_per_job
        if self.node_selector is not None:
            out["node_selector"] = dict(_node_label(s) for s in self.node_selector if s != "")
        if self.tolerations is not None:
            out["tolerations"] = [_toleration(s) for s in self.tolerations if s != ""]
        if self.secret is not None:
            out["secret"] = _checked(
                self.secret, re.compile(_DNS_SUBDOMAIN), "--secret", "a Secret's name, e.g. bertflow-credentials"
            )
        if self.cpu is not None:
            out["cpu_request"] = _checked(self.cpu, _QUANTITY, "--cpu", "a Kubernetes quantity, e.g. 4 or 500m")
        if self.memory is not None:
            out["memory_request"] = _checked(self.memory, _QUANTITY, "--memory", "a Kubernetes quantity, e.g. 16Gi")
        return out


def _checked(value: str, pattern: re.Pattern, flag: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise InputError(f"{flag} {value!r}: give {what}")
    return value


def _node_label(spec: str) -> tuple[str, str]:
    key, eq, value = spec.partition("=")
    if not eq or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
        raise InputError(f"--node-selector {spec!r}: give a node label as key=value, e.g. nvidia.com/gpu.present=true")
    return key, value


def _toleration(spec: str) -> dict[str, str]:
    """`key=value:Effect` (that taint), `key:Effect` (any value), `key=value` or `key` (every effect)."""
    rest, colon, effect = spec.rpartition(":") if ":" in spec else (spec, "", "")
    key, eq, value = rest.partition("=")
    if (colon and effect not in EFFECTS) or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
        raise InputError(
            f"--toleration {spec!r}: give key[=value][:Effect] with Effect one of {', '.join(EFFECTS)}, "
            "e.g. nvidia.com/gpu:NoSchedule"
        )
    toleration = {"key": key, "operator": "Equal" if eq else "Exists", **({"value": value} if eq else {})}
    return {**toleration, **({"effect": effect} if colon else {})}


def default_template() -> dict:
    """prefect-kubernetes' default base job template (its worker's)."""
    try:
        from prefect_kubernetes.worker import KubernetesWorker
    except ImportError:
        raise InputError(
            "--pool-type kubernetes needs prefect-kubernetes: pip install 'bertflow[kubernetes]'"
        ) from None
    return KubernetesWorker.get_default_base_job_template()


def job_template(heartbeat: int, options: KubernetesOptions, current: dict | None = None) -> dict:
    """The pool's base job template: bertflow's on prefect-kubernetes' default, with the defaults the pool
    has (from an earlier deploy or the UI) kept, then the options given; runs send heartbeats every
    `heartbeat` s. The job manifest is always bertflow's."""
    given = options.defaults()
    template = default_template()
    props = template["variables"]["properties"]
    props.update(copy.deepcopy(VARIABLES))
    for name, schema in ((current or {}).get("variables", {}).get("properties", {})).items():
        if name in props and "default" in schema:
            props[name]["default"] = schema["default"]
    for name, value in given.items():
        props[name]["default"] = value
    if not props["image"].get("default"):
        raise InputError(
            "--pool-type kubernetes needs --image: the image jobs run, built from bertflow's Dockerfile "
            "(e.g. --image registry.example.com/bertflow:0.3.0)"
        )
    env = props["env"]
    env["default"] = {
        **(env.get("default") or {}),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat),
        **dict.fromkeys(WORKER_CREDENTIALS),
    }

    manifest = template["job_configuration"]["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    [container] = pod["containers"]
    # A list, not "{{ env }}": prefect-kubernetes puts the `env` variable's entries before these.
    container["env"] = [{"name": "BERTFLOW_GPU_HOST", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    container["envFrom"] = [{"secretRef": {"name": "{{ secret }}"}}]
    container["resources"]["requests"][GPU] = "{{ gpus }}"
    container["resources"]["limits"][GPU] = "{{ gpus }}"
    return template


def describe(template: dict) -> str:
    """What a shard job gets, in a few words (no values of the environment)."""
    d = {name: schema.get("default") for name, schema in template["variables"]["properties"].items()}
    return f"image {d['image']}, namespace {d['namespace']}, {d['gpus']} GPU per shard job, Secret {d['secret']}"
