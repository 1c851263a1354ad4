"""Zombie runs: the automation that marks a run of bertflow's deployments Crashed when its heartbeats stop.

A flow run started by a worker sends `prefect.flow-run.heartbeat` events every
`heartbeat_seconds` (`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`, set in the work pool's job template).
When a host dies (SIGKILL, OOM killer, a preempted spot GPU), nothing reports the run's end: it
would stay Running forever. This proactive trigger, per flow run, fires when a run that has sent a
heartbeat sends neither another heartbeat nor a final state within the window, and moves it to
Crashed. The parent then sees a crashed shard and submits it again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from bertflow.errors import InputError
from bertflow.names import ZOMBIE_AUTOMATION

DEFAULT_WINDOW = 90  # seconds without a heartbeat before a run counts as dead: three missed beats
MIN_HEARTBEAT = 30  # Prefect sends heartbeats at most this often
# Final state events carry the state's name: bertflow's BadInput and Prefect's TimedOut end a run too.
FINAL_EVENTS = ("Completed", "Failed", "Cancelled", "Crashed", "BadInput", "TimedOut")


def heartbeat_seconds(window: int) -> int:
    """How often runs send heartbeats so that `window` covers at least two of them."""
    if window < 2 * MIN_HEARTBEAT:
        raise InputError(
            f"--heartbeat-window {window}: give {2 * MIN_HEARTBEAT} or more seconds "
            f"(Prefect sends a heartbeat every {MIN_HEARTBEAT} s at most, and one late beat must not kill a run)"
        )
    return max(MIN_HEARTBEAT, window // 3)


def zombie_automation(deployment_ids: Sequence[UUID], window: int) -> AutomationCore:
    """Crash a run of these deployments whose heartbeat has stopped for `window` seconds."""
    heartbeat_seconds(window)
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=(
            f"bertflow: mark a run of its deployments Crashed when no heartbeat came for {window} s "
            "(its host died); the parent run then submits the shard again."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in FINAL_EVENTS)},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification(
                {
                    "prefect.resource.role": "deployment",
                    "prefect.resource.id": sorted(f"prefect.deployment.{i}" for i in deployment_ids),
                }
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=window),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {window} s: the run's process or host died (bertflow's zombie automation)",
            )
        ],
    )


def _canonical(value: object) -> object:
    """Sets (the trigger's events, for_each) dump in hash order, which differs per process: sort them."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return sorted(value)
        return [_canonical(v) for v in value]
    return value


def _key(a: AutomationCore) -> str:
    dumped = a.model_dump(mode="json", include={"name", "description", "enabled", "trigger", "actions"})
    return json.dumps(_canonical(dumped), sort_keys=True)


def current_window(client: SyncPrefectClient) -> int | None:
    """The window of the automation on the server, if there is one."""
    for found in client.read_automations_by_name(ZOMBIE_AUTOMATION):
        within = getattr(found.trigger, "within", None)
        if isinstance(within, timedelta):
            return int(within.total_seconds())
    return None


def ensure_automation(client: SyncPrefectClient, wanted: AutomationCore) -> str:
    """Create the automation, update it if it differs, remove duplicates; 'created', 'updated' or 'unchanged'."""
    existing = client.read_automations_by_name(wanted.name)
    for extra in existing[1:]:
        client.delete_automation(extra.id)
    if not existing:
        client.create_automation(wanted)
        return "created"
    if _key(AutomationCore.model_validate(existing[0].model_dump())) == _key(wanted) and not existing[1:]:
        return "unchanged"
    client.update_automation(existing[0].id, wanted)
    return "updated"
