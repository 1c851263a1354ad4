"""`bertflow deploy`, `serve`, `backfill`, `dev-server`: bertflow as a service on a Prefect server."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bertflow.cli.app import app
from bertflow.cli.common import Bar, fail, out, reported, running
from bertflow.names import DEFAULT_POOL, NIGHTLY, PARENTS_QUEUE, SHARDS_QUEUE

_TEMPLATE_HELP = "with {date} where the day goes"


def _require_server(command: str) -> None:
    """Deployments on Prefect's temporary server would vanish with this process."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        fail(
            f"bertflow {command} needs a Prefect server: start one (`prefect server start`) and "
            "export PREFECT_API_URL=http://HOST:4200/api"
        )


_K8S = "--pool-type kubernetes (left out: what the pool has)"


@app.command()
def deploy(
    pool: Annotated[str, typer.Option(help="Work pool the workers poll (created if missing)")] = DEFAULT_POOL,
    pool_type: Annotated[
        str,
        typer.Option(
            help="process: workers on the GPU hosts run the runs; kubernetes: a worker in the cluster starts a Job "
            "per run (needs prefect-kubernetes). A pool of the other type is refused",
            metavar="process|kubernetes",
        ),
    ] = "process",
    gpus_per_host: Annotated[
        int | None, typer.Option(help="Models on the devices of one host at once (default 1, or what is deployed)")
    ] = None,
    cron: Annotated[
        str | None, typer.Option(help="embed-nightly's schedule, UTC (default '0 2 * * *', or what is deployed)")
    ] = None,
    source_template: Annotated[
        str | None, typer.Option(help=f"embed-nightly's SOURCE, {_TEMPLATE_HELP}, e.g. s3://bucket/raw/dt={{date}}/")
    ] = None,
    dest_template: Annotated[
        str | None,
        typer.Option(help=f"embed-nightly's DEST, {_TEMPLATE_HELP}, e.g. s3://bucket/embeddings/dt={{date}}/"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model of embed-nightly and embed-adhoc (default: the bundled one, or what is deployed)"),
    ] = None,
    heartbeat_window: Annotated[
        int | None,
        typer.Option(
            help="Seconds without a heartbeat before a run counts as dead and is marked Crashed "
            "(default 90, or what is deployed; 60 or more)"
        ),
    ] = None,
    publish_db: Annotated[
        str | None,
        typer.Option(
            help="LanceDB database (directory or s3://) embed-nightly publishes each day's partition into "
            "(`bertflow publish --sync partition`; '' stops; default: what is deployed, else none)"
        ),
    ] = None,
    publish_table: Annotated[str | None, typer.Option(help="With --publish-db: the table (default embeddings)")] = None,
    image: Annotated[
        str | None,
        typer.Option(
            help="Image the jobs run, built from bertflow's Dockerfile (needed to create the pool)",
            rich_help_panel=_K8S,
        ),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="Namespace of the jobs (default 'default')", rich_help_panel=_K8S)
    ] = None,
    gpus_per_job: Annotated[
        int | None,
        typer.Option(
            help="nvidia.com/gpu each shard job requests (default 1); parent jobs take none", rich_help_panel=_K8S
        ),
    ] = None,
    node_selector: Annotated[
        list[str] | None,
        typer.Option(
            help="Node label shard jobs need, key=value (repeat for more; '' for none), "
            "e.g. nvidia.com/gpu.present=true",
            rich_help_panel=_K8S,
        ),
    ] = None,
    toleration: Annotated[
        list[str] | None,
        typer.Option(
            help="Taint shard jobs tolerate, key[=value][:Effect] (repeat for more; '' for none), "
            "e.g. nvidia.com/gpu:NoSchedule",
            rich_help_panel=_K8S,
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            help="Kubernetes Secret whose keys become the jobs' environment: AWS_*, PREFECT_API_AUTH_STRING, HF_TOKEN "
            "(default bertflow-credentials); only its name goes in the pool",
            rich_help_panel=_K8S,
        ),
    ] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU request of each job, e.g. 4", rich_help_panel=_K8S)] = None,
    memory: Annotated[
        str | None, typer.Option(help="Memory request of each job, e.g. 16Gi", rich_help_panel=_K8S)
    ] = None,
) -> None:
    """Create the work pool and its queues, the deployments (embed-adhoc, embed-shard; with templates also
    embed-nightly and backfill), the GPU limit and the automation that crashes dead runs; idempotent."""
    _require_server("deploy")
    from bertflow.deployments.kubernetes import KubernetesOptions
    from bertflow.deployments.service import deploy as deploy_all

    k8s = KubernetesOptions(image, namespace, gpus_per_job, node_selector, toleration, secret, cpu, memory)
    with reported():
        changes = deploy_all(
            pool, gpus_per_host, cron, source_template, dest_template, model, heartbeat_window, pool_type, k8s,
            publish_db, publish_table,
        )  # fmt: skip
    table = Table(title="bertflow deploy", title_justify="left")
    for col in ("kind", "name", "change"):
        table.add_column(col)
    for kind, name, change in changes:
        table.add_row(kind, name, change)
    out.print(table)
    if pool_type == "kubernetes":
        out.print(
            f"Run one worker inside the cluster (a Kubernetes Deployment; its image needs prefect-kubernetes, as "
            f"bertflow's has): [bold]prefect worker start --pool {pool} --type kubernetes[/]. It starts a Job per "
            "run: shard jobs take a GPU, parent jobs none; their credentials come from the Secret named above.",
            highlight=False,
        )
        return
    out.print(
        f"Start a worker on each GPU host: [bold]prefect worker start --pool {pool} --work-queue {SHARDS_QUEUE} "
        f"--limit N[/] (N: shards at once), and one for the parent runs: [bold]prefect worker start --pool {pool} "
        f"--work-queue {PARENTS_QUEUE}[/]",
        highlight=False,
    )


@app.command()
def serve(
    cron: Annotated[
        str | None, typer.Option(help="embed-nightly's schedule, UTC (default '0 2 * * *', or what is deployed)")
    ] = None,
    source_template: Annotated[str | None, typer.Option(help=f"embed-nightly's SOURCE, {_TEMPLATE_HELP}")] = None,
    dest_template: Annotated[str | None, typer.Option(help=f"embed-nightly's DEST, {_TEMPLATE_HELP}")] = None,
    model: Annotated[str | None, typer.Option(help="Model of embed-nightly and embed-adhoc")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many runs at once (default: no limit)")] = None,
) -> None:
    """Serve embed-nightly, embed-adhoc and backfill from this process, no workers needed (Ctrl-C stops)."""
    from prefect import serve as prefect_serve

    _require_server("serve")
    from bertflow.deployments.service import served_deployments

    with reported():
        deployments, heartbeat = served_deployments(cron, source_template, dest_template, model)
    # Served runs are runs of the deployments the dead-run automation watches: they must beat as often.
    os.environ["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(heartbeat)
    prefect_serve(*deployments, limit=limit)


@app.command()
def backfill(
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD")],
    end: Annotated[str, typer.Option(help="Last day, YYYY-MM-DD (included)")],
    deployment: Annotated[str, typer.Option(help="Partitioned deployment to run per day")] = NIGHTLY,
    every: Annotated[str, typer.Option(help="Days between partitions: 1d, 7d")] = "1d",
    max_in_flight: Annotated[int, typer.Option(min=1, help="At most this many days' runs at once")] = 4,
    overwrite: Annotated[bool, typer.Option(help="Redo days whose DEST is already complete")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the plan and start nothing")] = False,
) -> None:
    """One run of DEPLOYMENT per day, skipping days already complete with the same config (and published,
    when the deployment publishes); rerun-safe."""
    _require_server("backfill")
    from bertflow.flows.backfill import backfill as backfill_flow
    from bertflow.tasks.backfill import make_plan

    with reported():
        plan = make_plan(deployment, start, end, every, overwrite)
    out.print(f"backfill {plan.deployment}: {len(plan.days)} partitions", highlight=False)
    for day in plan.days:
        action = "will run" if day.action == "run" else "skip"
        out.print(f"{day.partition}  {action}: {day.why}  {day.source} -> {day.dest}", highlight=False, soft_wrap=True)
    if dry_run:
        out.print(f"dry run: {len(plan.to_run)} to run, {len(plan.days) - len(plan.to_run)} to skip; nothing started")
        return
    if not plan.to_run:
        out.print("nothing to run: every partition is complete (and published, where the deployment publishes)")
        return
    with running(Bar("backfill", unit="partitions")):
        results = backfill_flow(
            start=start, end=end, deployment=deployment, every=every, max_in_flight=max_in_flight,
            overwrite=overwrite, plan=plan,
        )  # fmt: skip
    for partition, result in sorted(results.items()):
        out.print(f"{partition}  {result}", highlight=False, soft_wrap=True)


@app.command("dev-server")
def dev_server(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the Prefect API and UI on 127.0.0.1")] = 4200,
    data_dir: Annotated[
        Path, typer.Option(help="PostgreSQL's cluster, the credentials and the server's home; reused by the next start")
    ] = Path("~/.bertflow/dev-server"),
    pg_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="PostgreSQL's port on 127.0.0.1 (default: a free one)")
    ] = None,
    auth: Annotated[
        bool, typer.Option(help="Basic auth on the Prefect API (the credential is kept in DATA_DIR/api-auth)")
    ] = True,
) -> None:
    """A local PostgreSQL and a Prefect server on it, in the foreground (Ctrl-C stops both; the data stays)."""
    from bertflow.deployments.devserver import DevServer

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with reported():
        server = DevServer(data_dir, port, pg_port, auth)
        try:
            try:
                server.start()
            except RuntimeError as e:
                fail(f"{e} (logs in {server.dir})", 1)
            out.print(f"Prefect server on PostgreSQL at {server.api_url}; data in {server.dir}", highlight=False)
            out.print(f"export PREFECT_API_URL={server.api_url}", highlight=False, soft_wrap=True)
            if auth and os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
                out.print("export PREFECT_API_AUTH_STRING=$PREFECT_SERVER_API_AUTH_STRING", highlight=False)
            elif auth:
                out.print(
                    f'export PREFECT_API_AUTH_STRING="$(cat {server.auth_file})"', highlight=False, soft_wrap=True
                )
            out.print("Ctrl-C stops both; the next start reuses the data.", highlight=False)
            while not stop.wait(1):
                if why := server.exited():
                    fail(f"{why}; logs in {server.dir}", 1)
        finally:
            server.stop()
