"""The embed flow's optional last step: the finished DEST into a LanceDB table (`bertflow publish`)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from bertflow.config import PublishConfig
from bertflow.io.manifest import Publication
from bertflow.partitions import stable_key
from bertflow.pipeline import publish
from bertflow.resolved import ResolvedConfig
from bertflow.tasks.policy import IN_MEMORY, RETRY


@task(**IN_MEMORY, **RETRY)
def check_publish(target: PublishConfig, config: ResolvedConfig) -> None:
    """Before any embedding: refuse a publish that could not work (LanceDB: opens the table if it exists)."""
    publish.check_target(target, config)


@task(**IN_MEMORY, **RETRY)
def publish_dest(dest: str, target: PublishConfig) -> Publication:
    """Upsert DEST's rows into the table, delete what the sync mode says is gone, index (LanceDB, storage)."""
    done = publish.publish(dest, target)
    get_run_logger().info(
        "published %s to table %s in %s (version %d): %d rows, %d inserted, %d updated, %d deleted; indexed: %s",
        dest, done.table, done.db, done.version, done.rows, done.inserted, done.updated, done.deleted,
        ", ".join(done.indexed) or "none",
    )  # fmt: skip
    create_table_artifact(
        key=stable_key("published", done.db, done.table),
        table=[done.model_dump(mode="json", exclude={"published_at"})],
        description=f"{dest} published to LanceDB table {done.table}",
    )
    return done
