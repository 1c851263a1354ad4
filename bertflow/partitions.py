"""Daily partitions: `{date}` templates, the partition of a scheduled run, backfill ranges, run names.

Pure: no Prefect, no I/O. A partition is a calendar day in UTC, written YYYY-MM-DD.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime, timedelta, timezone

from bertflow.errors import InputError
from bertflow.io.storage import check_uri

DATE_FIELD = "{date}"
_EVERY = re.compile(r"^(\d+)d$")


def has_date(template: str) -> bool:
    return DATE_FIELD in template


def render(template: str, partition: date | str) -> str:
    """The template with `{date}` replaced by the partition (YYYY-MM-DD)."""
    day = partition.isoformat() if isinstance(partition, date) else partition
    return template.replace(DATE_FIELD, day)


def parse_date(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise InputError(f"{what} {text!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-11-01") from None


def partition_for(scheduled: datetime, lag_days: int) -> date:
    """The day a run scheduled at `scheduled` processes: `lag_days` before its UTC date."""
    if scheduled.tzinfo is None:
        scheduled = scheduled.replace(tzinfo=timezone.utc)
    return scheduled.astimezone(timezone.utc).date() - timedelta(days=lag_days)


def parse_every(text: str) -> int:
    """Days between backfill partitions: '1d', '7d'."""
    m = _EVERY.match(text.strip())
    if not m or int(m.group(1)) < 1:
        raise InputError(f"--every {text!r}: give a number of days such as 1d or 7d")
    return int(m.group(1))


def partition_range(start: date, end: date, every_days: int = 1) -> list[date]:
    """start, start + every, ... up to and including end."""
    if end < start:
        raise InputError(f"--end {end} is before --start {start}; give an end on or after the start")
    days = (end - start).days
    return [start + timedelta(days=d) for d in range(0, days + 1, every_days)]


def resolve(
    source: str, dest: str, partition: str | None, lag_days: int, scheduled: datetime
) -> tuple[str, str, str | None]:
    """SOURCE and DEST of one run and its partition (None when the templates have no `{date}`)."""
    if not has_date(source) and not has_date(dest):
        if partition is not None:
            raise InputError(f"partition {partition} given but neither SOURCE nor DEST has {DATE_FIELD} to fill in")
        return source, dest, None
    check_templates(source, dest)
    day = parse_date(partition, "partition") if partition is not None else partition_for(scheduled, lag_days)
    return render(source, day), render(dest, day), day.isoformat()


def check_templates(source: str, dest: str) -> None:
    """Partitioned runs need `{date}` in both SOURCE and DEST, or days would overwrite each other."""
    for name, template in (("SOURCE", source), ("DEST", dest)):
        check_uri(template)
        if not has_date(template):
            raise InputError(
                f"{name} template {template!r} has no {DATE_FIELD}; write it like s3://bucket/raw/dt={DATE_FIELD}/"
            )


def slug(text: str) -> str:
    """Lowercase letters, digits and single dashes (what Prefect accepts in artifact keys)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def dataset_name(dest: str) -> str:
    """The last path segment of DEST that is not a partition (`dt={date}`, `2026-11-01`)."""
    path = dest.split("://", 1)[-1]
    segments = [s for s in path.split("/") if s and s not in (".", "..")]
    keep = [s for s in segments if not (has_date(s) or "=" in s or re.fullmatch(r"\d{4}-\d{2}-\d{2}", s))]
    return slug(keep[-1]) if keep else "dataset"


def run_name(dest: str, partition: str | None) -> str:
    """`embed-{dataset}-{partition}`, or `embed-{dataset}` for an unpartitioned DEST."""
    return f"embed-{dataset_name(dest)}" + (f"-{partition}" if partition else "")


def stable_key(kind: str, *parts: str, length: int = 60) -> str:
    """A Prefect-valid key (artifact, idempotency) that stays the same for the same inputs."""
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    readable = slug("-".join(parts))[-(length - len(kind) - 14) :].strip("-")
    return f"{kind}-{readable}-{digest}" if readable else f"{kind}-{digest}"
