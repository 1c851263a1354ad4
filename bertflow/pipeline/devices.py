"""The device as part of an output's contract: bf16 (or fp16) vectors from a GPU and from a CPU differ.

fp32 vectors agree across devices within the tolerance the engine is tested to (1e-5), so an fp32
DEST may hold parts from any device. In half precision each kind of device rounds its own way (CPU
bf16 runs under autocast, CUDA keeps bf16 weights and its own kernels), so one DEST holds parts of
one kind only. The kind comes from what each part's footer records (`PartInfo.device`):

- a run that knows its kind (an explicit `--device`, or `auto` resolved in the process that embeds)
  re-embeds the parts another kind made, instead of mixing them (and says so);
- a run whose shards run elsewhere under `--device auto` binds its shards to the kind DEST's parts
  already have: a worker of another kind refuses the shard (another host may take it);
- a DEST whose parts still disagree at the end (a fresh `auto` run on a mixed fleet) is not
  declared complete: a rerun with an explicit `--device` re-embeds the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from bertflow.errors import HostError, InputError
from bertflow.io.manifest import ShardJob, ShardResult
from bertflow.model.loading import fallback_note, pick_device
from bertflow.resolved import ResolvedConfig

FELL_BACK = "fell back"  # in a part's device label when `--device auto` ran on CPU where CUDA was expected


def kind(label: str | None) -> str | None:
    """`cuda` of `cuda:1 (NVIDIA H200)`, `cpu` of `cpu`; None for a part of bertflow 0.3 or earlier."""
    if not label:
        return None
    return label.split(" ", 1)[0].split(":", 1)[0]


def bound(config: ResolvedConfig) -> bool:
    """Whether the device kind is part of the output: every precision but fp32."""
    return config.precision != "fp32"


def run_kind(config: ResolvedConfig, local: bool) -> str | None:
    """The kind of device this run embeds on, where the planning process can know it: an explicit
    `--device`, or `auto` when the shards run in this process. None: `auto` on workers."""
    if config.device != "auto":
        return config.device
    return pick_device("auto") if local else None


def keep_done(
    config: ResolvedConfig, done: Mapping[str, ShardResult], local: bool
) -> tuple[dict[str, ShardResult], str | None, list[str]]:
    """The finished parts a resume keeps, the kind its shards must run on (None: any), and the parts
    it re-embeds because another kind of device made them."""
    if not bound(config):
        return dict(done), None, []
    want = run_kind(config, local)
    if want == "cpu" and config.device == "auto" and (note := fallback_note("auto", "cpu")):
        if any(kind(r.device) not in ("cpu", None) for r in done.values()):  # a broken GPU host, most likely
            raise HostError(
                f"{note}, and DEST holds parts embedded on a GPU in {config.precision}: fix this host's GPU, "
                "or rerun with --device cpu to embed those parts again on the CPU"
            )
    if want is None:  # `auto` on workers: the kind DEST's parts already have, if they agree
        kinds = Counter(k for r in done.values() if (k := kind(r.device)))
        if len(kinds) != 1:
            return dict(done), None, []  # none yet (any kind may start), or mixed: `check_one_kind` refuses
        want = next(iter(kinds))
    redo = sorted(name for name, r in done.items() if kind(r.device) not in (want, None))
    return {n: r for n, r in done.items() if n not in redo}, want, redo


def check_host(job: ShardJob) -> str:
    """This host's device for the shard; a HostError when it is not the kind the shard is bound to."""
    picked = pick_device(job.config.device)
    if job.device_kind is not None and picked != job.device_kind:
        raise HostError(
            f"{job.spec.name}: {job.dest} holds parts embedded on {job.device_kind} in {job.config.precision}, "
            f"and this host would embed on {picked}, whose {job.config.precision} vectors differ: run it on a "
            f"{job.device_kind} host, or rerun with --device {picked} to re-embed the others"
        )
    return picked


def check_one_kind(config: ResolvedConfig, results: Sequence[ShardResult]) -> None:
    """Refuse to declare complete a half-precision DEST whose parts come from different kinds of device."""
    if not bound(config):
        return
    by_kind: dict[str, list[str]] = {}
    for r in results:
        if k := kind(r.device):
            by_kind.setdefault(k, []).append(r.name)
    if len(by_kind) > 1:
        found = "; ".join(f"{k}: {len(names)} parts ({names[0]}...)" for k, names in sorted(by_kind.items()))
        raise InputError(
            f"the parts were embedded in {config.precision} on different kinds of device ({found}), whose vectors "
            f"differ: rerun with --device {' or --device '.join(sorted(by_kind))} to re-embed the others"
        )


def manifest_device(results: Sequence[ShardResult], here: str) -> str:
    """What the manifest says the run embedded on: the kinds its parts record (`here`, the kind this
    process picks, when none records one; `unknown` beside others for parts too old to say), and a
    fallback from CUDA to CPU if there was one."""
    kinds = sorted({k for r in results if (k := kind(r.device))}) or [here]
    if len(kinds) < len({kind(r.device) for r in results}):  # some parts too old to say (bertflow 0.3)
        kinds.append("unknown")
    notes = sorted({r.device.split(" ", 1)[1].strip("()") for r in results if r.device and FELL_BACK in r.device})
    return ", ".join(kinds) + "".join(f" ({n})" for n in notes)


def device_label(config: ResolvedConfig, picked: str, card: str) -> tuple[str, str | None]:
    """A part's device label (`card`, e.g. `cuda:1 (NVIDIA H200)`) and the warning to log when
    `--device auto` ran on CPU on a host where CUDA was expected (the label then says so too)."""
    note = fallback_note(config.device, picked)
    return (f"{card} ({note})" if note else card), note
