"""The Python API upstream services call; the CLI is a thin layer over it.

    from worker.api import enqueue_refresh
    job_id = enqueue_refresh("acme", "aud-42", members="s3-export/aud-42.csv.gz")

Messages carry ids only (job ids, batch ids): never tokens, never identifiers.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from worker.identifiers import ID_SCHEMA, IdType
from worker.keys import check_id
from worker.models import AT_REST, AudienceLink, Destination, JobRecord, JobSpec
from worker.runtime import Runtime, runtime
from worker.tiktok import BadRequest, TikTokError

log = structlog.get_logger(__name__)

AUDIENCE_LIMIT = 400  # custom audiences per TikTok advertiser


def _app(app: Any = None) -> Any:
    if app is not None:
        return app
    from worker.app import app as celery_app

    return celery_app


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


# -- destinations ----------------------------------------------------------------------------------
def add_destination(
    name: str,
    advertiser_id: str,
    access_token: str,
    *,
    identifiers: list[str] | None = None,
    phone_region: str | None = None,
    rate_per_second: float | None = None,
    destination_id: str | None = None,
    verify: bool = False,
    rt: Runtime | None = None,
) -> Destination:
    rt = rt or runtime()
    dest_id = check_id("destination", destination_id or new_id("dst"))
    if rt.store.destination(dest_id) is not None:
        raise ValueError(f"destination {dest_id!r} exists already")
    dest = Destination(
        id=dest_id,
        name=name,
        advertiser_id=advertiser_id,
        identifiers=[IdType(i) for i in identifiers] if identifiers else list(IdType),
        phone_region=phone_region,
        rate_per_second=rate_per_second,
    )
    if verify:
        verify_token(dest.advertiser_id, access_token, rt=rt)
    rt.store.save_destination(dest, access_token)
    return dest


def verify_token(advertiser_id: str, access_token: str, *, rt: Runtime | None = None) -> str:
    """Check the token against TikTok and that it grants this advertiser; returns its name."""
    rt = rt or runtime()
    try:
        advertisers = rt.client.advertisers(access_token)
    except TikTokError as error:
        raise ValueError(f"TikTok refused the access token: {error}") from None
    for item in advertisers:
        if str(item.get("advertiser_id")) == str(advertiser_id):
            return str(item.get("advertiser_name", ""))
    granted = ", ".join(str(i.get("advertiser_id")) for i in advertisers) or "none"
    raise ValueError(
        f"the access token does not grant advertiser {advertiser_id} (it grants: {granted})"
    )


def update_token(
    dest_id: str, access_token: str, *, verify: bool = False, rt: Runtime | None = None
) -> Destination:
    rt = rt or runtime()
    dest = rt.store.require_destination(dest_id)
    if verify:
        verify_token(dest.advertiser_id, access_token, rt=rt)
    dest.status = "active"
    dest.status_message = ""
    dest.updated_at = time.time()
    rt.store.save_destination(dest, access_token)
    return dest


def update_destination(
    dest_id: str,
    *,
    name: str | None = None,
    identifiers: list[str] | None = None,
    phone_region: str | None = None,
    rate_per_second: float | None = None,
    rt: Runtime | None = None,
) -> Destination:
    """Change a destination's name, mapping (identifiers sent), default phone region or rate.

    `rate_per_second=0` goes back to the default budget (RATE_LIMIT_PER_SECOND); `phone_region=""`
    clears the region. Identifiers dropped from the mapping are deleted from TikTok by the next
    refresh of each linked audience (they are no longer staged, so the diff removes them).
    """
    rt = rt or runtime()
    dest = rt.store.require_destination(dest_id)
    fields: dict[str, Any] = {}
    if name is not None:
        fields["name"] = name
    if identifiers is not None:
        if not identifiers:
            raise ValueError(
                "a destination sends at least one identifier (email, phone, idfa, gaid)"
            )
        fields["identifiers"] = identifiers
    if phone_region is not None:
        fields["phone_region"] = phone_region
    if rate_per_second is not None:
        if rate_per_second < 0:
            raise ValueError("the rate is a number of requests per second (0: the default)")
        fields["rate_per_second"] = rate_per_second or None
    # Validated like a new destination (region code, identifier names), token left untouched.
    updated = Destination.model_validate({**dest.model_dump(), **fields, "updated_at": time.time()})
    rt.store.save_destination(updated)
    return updated


# -- audiences ---------------------------------------------------------------------------------------
def link_audience(
    dest_id: str,
    audience_id: str,
    *,
    tiktok_audience_id: str | None = None,
    name: str | None = None,
    members_uri: str | None = None,
    refresh_every_seconds: float | None = None,
    id_extension: bool = False,
    rt: Runtime | None = None,
) -> AudienceLink:
    """Link a CDP audience to a TikTok audience, creating it once (under a lock) when no id is given."""
    rt = rt or runtime()
    check_id("audience", audience_id)
    dest = rt.store.require_destination(dest_id)
    store = rt.store
    lock = store.r.lock(store.keys.link_lock(dest_id, audience_id), timeout=60, blocking_timeout=90)
    with lock:
        existing = store.link(dest_id, audience_id)
        if existing is not None:
            updates = {
                k: v
                for k, v in {
                    "members_uri": members_uri,
                    "refresh_every_seconds": refresh_every_seconds,
                }.items()
                if v is not None
            }
            if id_extension:
                updates["id_extension"] = True
            if refresh_every_seconds is not None and existing.next_refresh_at is None:
                updates["next_refresh_at"] = time.time()  # a new schedule is due at once
            if updates:
                existing = existing.model_copy(update=updates)
                store.save_link(existing)
            return existing
        created_at = None
        if tiktok_audience_id is None:
            try:
                tiktok_audience_id = rt.client.create_audience(
                    store.token(dest_id), dest.advertiser_id, name or audience_id
                )
            except BadRequest as error:
                if "limit" not in error.message.lower():
                    raise
                raise ValueError(
                    f"TikTok refused to create the audience: advertiser {dest.advertiser_id} has reached "
                    f"TikTok's limit of {AUDIENCE_LIMIT} custom audiences ({error}). Delete audiences you no "
                    "longer use in TikTok Ads Manager (Tools > Audience manager), or link an existing "
                    "one with --tiktok-audience-id."
                ) from None
            created_at = time.time()
            log.info(
                "tiktok_audience_created",
                audience_id=audience_id,
                tiktok_audience_id=tiktok_audience_id,
            )
        # A new link starts with an empty ledger: what an earlier link of this audience id sent
        # (before an unlink) says nothing about this TikTok audience. (Re-linking the same TikTok
        # audience: run `refresh --resync` to rebuild the ledger.)
        store.r.unlink(
            store.keys.suppression_pending(dest_id, audience_id),
            *[
                store.keys.ledger(dest_id, audience_id, shard, schema)
                for shard in range(rt.settings.state_shards)
                for schema in ID_SCHEMA.values()
            ],
        )
        link = AudienceLink(
            destination_id=dest_id,
            audience_id=audience_id,
            tiktok_audience_id=str(tiktok_audience_id),
            name=name or audience_id,
            tiktok_created_at=created_at,
            members_uri=members_uri,
            refresh_every_seconds=refresh_every_seconds,
            id_extension=id_extension,
            next_refresh_at=time.time() if refresh_every_seconds else None,
        )
        store.save_link(link)
        return link


def update_link(
    dest_id: str,
    audience_id: str,
    *,
    members_uri: str | None = None,
    refresh_every_seconds: float | None = None,
    id_extension: bool | None = None,
    clear_schedule: bool = False,
    rt: Runtime | None = None,
) -> AudienceLink:
    """Change a link's schedule (members URI template + frequency) or its ID extension flag."""
    rt = rt or runtime()
    link = rt.store.link(dest_id, audience_id)
    if link is None:
        raise LookupError(f"audience {audience_id!r} is not linked to destination {dest_id!r}")
    fields: dict[str, Any] = {}
    if clear_schedule:
        fields.update(members_uri=None, refresh_every_seconds=None, next_refresh_at=None)
    if members_uri is not None:
        fields["members_uri"] = members_uri
    if refresh_every_seconds is not None:
        if refresh_every_seconds <= 0:
            raise ValueError("the refresh frequency must be positive")
        fields["refresh_every_seconds"] = refresh_every_seconds
        # Due one period after the last refresh (at once if it never ran).
        last = link.last_refresh_at
        fields["next_refresh_at"] = last + refresh_every_seconds if last else time.time()
    if id_extension is not None:
        fields["id_extension"] = id_extension
    merged = link.model_copy(update=fields)
    if merged.refresh_every_seconds and not merged.members_uri:
        raise ValueError("a scheduled refresh needs a members URI (--members)")
    rt.store.update_link(dest_id, audience_id, **fields)
    return rt.store.link(dest_id, audience_id) or merged


# -- jobs ----------------------------------------------------------------------------------------------
def enqueue_refresh(
    destination_id: str,
    audience_id: str,
    *,
    members: str | None = None,
    inline: list[dict[str, Any]] | None = None,
    additions: list[dict[str, Any]] | None = None,
    removals: list[dict[str, Any]] | None = None,
    format: str | None = None,
    job_id: str | None = None,
    resync: bool = False,
    dry_run: bool = False,
    allow_mass_delete: bool = False,
    rt: Runtime | None = None,
    app: Any = None,
) -> str:
    """Validate and record a refresh job, then send it to the `refresh` queue; returns the job id.

    The same `job_id` twice is one job (the second call returns the id and sends nothing).
    """
    rt = rt or runtime()
    if additions is not None or removals is not None:
        additions, removals = additions or [], removals or []
    spec = JobSpec(
        job_id=job_id or f"job_{uuid.uuid4().hex[:16]}",
        destination_id=destination_id,
        audience_id=audience_id,
        members=members,
        inline=inline,
        additions=additions,
        removals=removals,
        format=format,
        resync=resync,
        dry_run=dry_run,  # type: ignore[arg-type]
        allow_mass_delete=allow_mass_delete,
    )
    spec.check_source()
    rt.store.require_destination(destination_id)
    if rt.store.link(destination_id, audience_id) is None:
        raise LookupError(
            f"audience {audience_id!r} is not linked to destination {destination_id!r} "
            f"(run `tiktok-sync audience link {audience_id} --destination {destination_id}`)"
        )
    if rt.store.create_job(spec):
        _app(app).send_task("tiktok.refresh_audience", args=[spec.job_id])
        log.info(
            "job_enqueued",
            job_id=spec.job_id,
            audience_id=audience_id,
            destination_id=destination_id,
        )
    return spec.job_id


def approve(job_id: str, *, rt: Runtime | None = None, app: Any = None) -> None:
    from worker.pipeline import approve as approve_job

    approve_job(rt or runtime(), job_id)
    _app(app).send_task("tiktok.refresh_audience", args=[job_id])


def resume(job_id: str, *, rt: Runtime | None = None, app: Any = None) -> None:
    from worker.maintenance import REFRESH
    from worker.maintenance import resume as resume_job

    _, step = resume_job(rt or runtime(), job_id)
    celery = _app(app)
    if step == REFRESH:
        celery.send_task("tiktok.refresh_audience", args=[job_id])
        return
    for batch_id in step.send:  # type: ignore[union-attr]
        celery.send_task("tiktok.send_batch", args=[batch_id])
    if step.finalize:  # type: ignore[union-attr]
        celery.send_task("tiktok.finalize", args=[job_id])


def job(job_id: str, *, rt: Runtime | None = None) -> JobRecord | None:
    return (rt or runtime()).store.job(job_id)


def wait_for(
    job_id: str,
    *,
    timeout: float = 3600,
    poll: float = 0.5,
    rt: Runtime | None = None,
    on_progress: Callable[[JobRecord], None] | None = None,
) -> JobRecord:
    """Block until the job is at rest (succeeded, failed, held, auth_failed, ...)."""
    rt = rt or runtime()
    end = time.monotonic() + timeout
    while True:
        record = rt.store.job(job_id)
        if record is None:
            raise LookupError(f"unknown job {job_id!r}")
        if on_progress is not None:
            on_progress(record)
        if record.status in AT_REST:
            return record
        if time.monotonic() > end:
            raise TimeoutError(f"job {job_id} still {record.status} after {timeout:.0f}s")
        time.sleep(poll)
