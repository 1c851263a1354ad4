"""The device as part of an output's contract: bf16 (or fp16) vectors from a GPU and from a CPU differ.

fp32 vectors agree across devices within the tolerance the engine is tested to (1e-5), so an fp32
DEST may hold parts from any device. In half precision each kind of device rounds its own way (CPU
bf16 runs under autocast, CUDA keeps bf16 weights and its own kernels), so one DEST holds parts of
one kind only. The kind comes from what each part's footer records (`PartInfo.device`):

- a run that knows its kind (an explicit `--device`, or `auto` resolved in the process that embeds)
  refuses a DEST whose finished parts another kind made, touching nothing (`--overwrite` embeds it
  all again): re-embedding them unasked would throw finished work away, maybe hours of GPU time;
- a run whose shards run elsewhere under `--device auto` binds its shards to the kind DEST's parts
  already have: a worker of another kind refuses the shard (another host may take it);
- a DEST whose parts still disagree at the end (a fresh `auto` run on a mixed fleet) is not
  declared complete (`--overwrite` with an explicit `--device` embeds it on one kind).
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


def keep_done(config: ResolvedConfig, done: Mapping[str, ShardResult], local: bool) -> str | None:
    """The kind of device a half-precision resume's shards must run on (None: any). Refuses, touching
    nothing, a run that would embed on another kind than DEST's finished parts were made on: their
    vectors would differ from the new parts', and re-embedding them unasked would throw work away."""
    if not bound(config):
        return None
    want = run_kind(config, local)
    if want is None:  # `auto` on workers: the kind DEST's parts already have, if they agree
        kinds = Counter(k for r in done.values() if (k := kind(r.device)))
        return next(iter(kinds)) if len(kinds) == 1 else None  # none yet: any; mixed: `check_one_kind` refuses
    other = sorted(name for name, r in done.items() if kind(r.device) not in (want, None))
    if not other:
        return want
    made = " and ".join(sorted({str(kind(done[n].device)) for n in other}))
    parts = f"{len(other)} finished parts embedded in {config.precision} on {made} ({other[0]}...)"
    if config.device == "auto" and want == "cpu" and (note := fallback_note("auto", "cpu")):
        raise HostError(  # a GPU host whose GPU failed, most likely
            f"{note}, and DEST holds {parts}: fix this host's GPU, or pass --overwrite --device cpu to embed "
            "DEST again on the CPU"
        )
    raise InputError(
        f"DEST holds {parts}, and this run embeds on {want}, whose {config.precision} vectors differ: run it on "
        f"a {made} host, or pass --overwrite to embed all of DEST again on {want}"
    )


def check_host(job: ShardJob) -> str:
    """This host's device for the shard; a HostError when it is not the kind the shard is bound to."""
    picked = pick_device(job.config.device)
    if job.device_kind is not None and picked != job.device_kind:
        raise HostError(
            f"{job.spec.name}: {job.dest} holds parts embedded on {job.device_kind} in {job.config.precision}, "
            f"and this host would embed on {picked}, whose {job.config.precision} vectors differ: run it on a "
            f"{job.device_kind} host, or rerun with --overwrite --device {picked} to embed DEST again on {picked}"
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
            f"differ: rerun with --overwrite and --device {' or --device '.join(sorted(by_kind))} to embed DEST on one"
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
