"""The embed flow's report: DEST/_report.html, and its key pictures in the Prefect UI."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from bertflow.errors import one_line
from bertflow.io import storage
from bertflow.io.manifest import REPORT_NAME
from bertflow.partitions import stable_key
from bertflow.pipeline.report_data import gather
from bertflow.pipeline.report_page import markdown, page
from bertflow.tasks.policy import IN_MEMORY


@task(**IN_MEMORY)
def report_dest(dest: str) -> str | None:
    """Write the report next to the manifest (storage) and publish its token lengths, rejects and shard
    timeline as a Markdown artifact. The run's output is complete by now: a report that cannot be made is a
    warning, not a failed run."""
    logger = get_run_logger()
    uri = storage.join(dest, REPORT_NAME)
    try:
        data = gather(dest)
        storage.write_atomic(uri, page(data).encode())
    except Exception as e:  # logged: the embeddings themselves are done and verified
        logger.warning("no report for %s: %s", dest, one_line(e))
        return None
    create_markdown_artifact(markdown(data, uri), key=stable_key("report", dest), description=f"Report of {dest}")
    create_link_artifact(uri, link_text="the report (HTML)", key=stable_key("report-link", dest))
    logger.info("report written to %s", uri)
    return uri
