"""`tiktok-sync`: the command line for ops and upstream scripts (every read command has --json)."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker import api
from worker.models import JobRecord, JobStatus
from worker.secrets import new_key

cli = typer.Typer(
    help="Keep TikTok custom audiences in step with CDP audiences.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
destination_cli = typer.Typer(
    help="Private destinations: a TikTok advertiser and its access token.", no_args_is_help=True
)
audience_cli = typer.Typer(
    help="Links between CDP audiences and TikTok audiences.", no_args_is_help=True
)
auth_cli = typer.Typer(
    help="TikTok OAuth: turn an auth code into an access token.", no_args_is_help=True
)
cli.add_typer(destination_cli, name="destination")
cli.add_typer(audience_cli, name="audience")
cli.add_typer(auth_cli, name="auth")
# Piped output (scripts, CI logs) gets wide tables instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


@cli.callback()
def _setup() -> None:
    """Logs go to stderr (stdout carries ids and JSON for scripts)."""
    from config.logging import configure_logging
    from config.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# Options several commands share (here and in cli_admin): one definition each.
DestinationOpt = Annotated[str, typer.Option(help="Destination id")]
ScheduleMembersOpt = Annotated[
    str | None, typer.Option(help="Members URI for scheduled refreshes (strftime template)")
]
EveryOpt = Annotated[
    str | None, typer.Option(help="Scheduled refresh every N seconds, or 30m, 6h, 1d")
]
JobIdOpt = Annotated[str | None, typer.Option(help="Idempotency key: the same id twice is one job")]
WaitOpt = Annotated[
    bool, typer.Option(help="Show progress; exit non-zero unless the job succeeded")
]
DryRunOpt = Annotated[bool, typer.Option(help="Report adds/removes, send nothing")]
TimeoutOpt = Annotated[float, typer.Option(help="With --wait: give up after this many seconds")]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _ts(value: float | None) -> str:
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (LookupError, ValueError) as error:
        from pydantic import ValidationError

        if isinstance(error, ValidationError):  # the field and the reason, not pydantic's help URL
            _fail(
                "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                    for e in error.errors()
                )
            )
        _fail(str(error))
    except Exception as error:
        from worker.tiktok import TikTokError

        if isinstance(error, TikTokError):
            _fail(f"TikTok answered: {error}")
        raise


@cli.command()
def keygen() -> None:
    """Print a new TOKEN_ENCRYPTION_KEY (Fernet key)."""
    print(new_key())


# -- destinations -------------------------------------------------------------------------------------
@destination_cli.command("add")
def destination_add(
    name: Annotated[str, typer.Option(help="A name people recognise")],
    advertiser_id: Annotated[str, typer.Option(help="The TikTok advertiser (ad account) id")],
    access_token: Annotated[
        str, typer.Option(help="The access token for that advertiser", envvar="TIKTOK_ACCESS_TOKEN")
    ],
    identifiers: Annotated[
        str, typer.Option(help="Identifiers sent: any of email,phone,idfa,gaid")
    ] = "email,phone,idfa,gaid",
    phone_region: Annotated[
        str | None, typer.Option(help="Default region for phones without country code")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Requests/s budget for this advertiser")
    ] = None,
    destination_id: Annotated[
        str | None, typer.Option("--id", help="Choose the id (default: generated)")
    ] = None,
    verify: Annotated[
        bool, typer.Option(help="Check token and advertiser with TikTok first")
    ] = False,
) -> None:
    """Create a private destination; prints its id."""
    dest = _guard(
        api.add_destination,
        name,
        advertiser_id,
        access_token,
        identifiers=[i.strip() for i in identifiers.split(",") if i.strip()],
        phone_region=phone_region,
        rate_per_second=rate,
        destination_id=destination_id,
        verify=verify,
    )
    print(dest.id)


@destination_cli.command("list")
def destination_list(json_: JsonOpt = False) -> None:
    """List destinations (never their tokens)."""
    dests = api.runtime().store.destinations()
    if json_:
        _print_json([d.model_dump() for d in dests])
        return
    table = Table("id", "name", "advertiser", "identifiers", "region", "status")
    for d in dests:
        table.add_row(
            d.id, d.name, d.advertiser_id, ",".join(d.identifiers), d.phone_region or "-", d.status
        )
    out.print(table)


@destination_cli.command("show")
def destination_show(destination_id: str, json_: JsonOpt = False) -> None:
    """Show one destination (without its token)."""
    dest = _guard(api.runtime().store.require_destination, destination_id)
    data = dest.model_dump()
    if json_:
        _print_json(data)
    else:
        for k, v in data.items():
            out.print(f"{k:16} {v}", highlight=False)


@destination_cli.command("update-token")
def destination_update_token(
    destination_id: str,
    access_token: Annotated[str, typer.Option(envvar="TIKTOK_ACCESS_TOKEN")],
    verify: Annotated[bool, typer.Option(help="Check the token with TikTok first")] = False,
) -> None:
    """Store a new access token and re-activate the destination (then `resume` its parked jobs)."""
    _guard(api.update_token, destination_id, access_token, verify=verify)
    print(f"destination {destination_id}: token updated, status active")


@destination_cli.command("remove")
def destination_remove(destination_id: str) -> None:
    """Forget a destination (TikTok audiences are left as they are)."""
    if not api.runtime().store.remove_destination(destination_id):
        _fail(f"unknown destination {destination_id!r}")
    print(f"removed {destination_id}")


# -- audiences -----------------------------------------------------------------------------------------
@audience_cli.command("link")
def audience_link(
    audience_id: str,
    destination: DestinationOpt,
    tiktok_audience_id: Annotated[
        str | None, typer.Option(help="Use this TikTok audience (default: create one)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the TikTok audience to create")] = None,
    members: ScheduleMembersOpt = None,
    every: EveryOpt = None,
    id_extension: Annotated[
        bool, typer.Option(help="Add identity-graph identifiers (`idgraph load`)")
    ] = False,
) -> None:
    """Link a CDP audience to a TikTok audience; prints the TikTok audience id."""
    from worker.cli_admin import parse_duration

    link = _guard(
        api.link_audience,
        destination,
        audience_id,
        tiktok_audience_id=tiktok_audience_id,
        name=name,
        members_uri=members,
        refresh_every_seconds=_guard(parse_duration, every) if every else None,
        id_extension=id_extension,
    )
    print(link.tiktok_audience_id)


@audience_cli.command("unlink")
def audience_unlink(audience_id: str, destination: Annotated[str, typer.Option()]) -> None:
    """Stop syncing an audience (the TikTok audience is left as it is)."""
    if not api.runtime().store.remove_link(destination, audience_id):
        _fail(f"audience {audience_id!r} is not linked to {destination!r}")
    print(f"unlinked {audience_id}")


@audience_cli.command("list")
def audience_list(
    destination: Annotated[str | None, typer.Option()] = None, json_: JsonOpt = False
) -> None:
    """Linked audiences with last/next refresh and match rate."""
    links = api.runtime().store.links(destination)
    if json_:
        _print_json([link.model_dump() for link in links])
        return
    table = Table(
        "audience", "destination", "tiktok id", "last refresh", "next refresh", "synced", "matched"
    )
    for link in links:
        table.add_row(
            link.audience_id,
            link.destination_id,
            link.tiktok_audience_id,
            _ts(link.last_refresh_at),
            _ts(link.next_refresh_at),
            str(link.synced_ids or "-"),
            f"{link.matched} ({link.matched / link.synced_ids:.0%})"
            if link.matched and link.synced_ids
            else "-",
        )
    out.print(table)


# -- jobs ------------------------------------------------------------------------------------------------
def _sum(job: JobRecord, group: str) -> int:
    return sum(v for k, v in job.counts.items() if k.startswith(group + ":"))


def _live_counts(job: JobRecord) -> str:
    """The counts people watch while a job runs, on one line."""
    parts = [f"rows {job.count('rows_read'):,}"]
    if job.count("batches_total"):
        parts.append(
            f"sent +{_sum(job, 'sent_add'):,}/-{_sum(job, 'sent_delete'):,}"
            f" of +{_sum(job, 'adds'):,}/-{_sum(job, 'removes'):,}"
        )
        parts.append(
            f"ok {job.count('batches_succeeded')} failed {job.count('batches_failed')}"
            + (f" parked {job.count('batches_parked')}" if job.count("batches_parked") else "")
        )
    if job.count("retries") or job.count("rate_limited_answers"):
        parts.append(
            f"retries {job.count('retries')} throttled {job.count('rate_limited_answers')}"
        )
    return " · ".join(parts)


def _progress(job_id: str, timeout: float) -> JobRecord:
    """A progress bar over the job's batches with live counts, until the job is at rest."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("batches"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[counts]}"),
        # Not a terminal (CI, pipes): one final frame, wide enough for the counts.
        console=err if err.is_terminal else Console(stderr=True, width=200),
        transient=False,
    ) as bar:
        task = bar.add_task(f"{job_id} queued", total=None, counts="")

        def show(job: JobRecord) -> None:
            total = job.count("batches_total") or None
            bar.update(
                task,
                total=total,
                completed=job.count("batches_finished"),
                description=f"{job_id} {job.status}/{job.phase}",
                counts=_live_counts(job),
            )

        try:
            return api.wait_for(job_id, timeout=timeout, on_progress=show)
        except LookupError as error:
            _fail(str(error))
        except TimeoutError:
            _fail(
                f"job {job_id} is still running after {timeout:.0f}s; follow it with "
                f"`tiktok-sync status {job_id} --follow`"
            )
        raise AssertionError("unreachable")


@cli.command()
def refresh(
    audience_id: str,
    destination: DestinationOpt,
    members: Annotated[
        str, typer.Option(help="Snapshot: path, file:// or http(s):// URI (.gz ok)")
    ],
    format: Annotated[
        str | None, typer.Option(help="csv or ndjson (default: from the name)")
    ] = None,
    job_id: JobIdOpt = None,
    wait: WaitOpt = False,
    dry_run: DryRunOpt = False,
    resync: Annotated[
        bool, typer.Option(help="Send every member again, whatever the ledger says")
    ] = False,
    allow_mass_delete: Annotated[bool, typer.Option(help="Skip the mass-delete guard")] = False,
    timeout: TimeoutOpt = 3600,
) -> None:
    """Enqueue a refresh of one audience from a members snapshot; prints the job id."""
    _enqueue(
        destination,
        audience_id,
        wait,
        timeout,
        members=members,
        format=format,
        job_id=job_id,
        dry_run=dry_run,
        resync=resync,
        allow_mass_delete=allow_mass_delete,
    )


def _enqueue(destination: str, audience_id: str, wait: bool, timeout: float, **job: Any) -> None:
    """Enqueue a refresh and print its id; with --wait, follow it and exit 0 only when it
    succeeded (or was a dry run)."""
    job_id = _guard(api.enqueue_refresh, destination, audience_id, **job)
    print(job_id)
    if wait:
        record = _progress(job_id, timeout)
        _print_summary(record)
        raise typer.Exit(0 if record.status in (JobStatus.SUCCEEDED, JobStatus.DRY_RUN) else 1)


def _job_dict(job: JobRecord, batches: bool = False) -> dict[str, Any]:
    data = job.model_dump(exclude={"counts"})
    data["counts"] = job.summary()
    if batches:
        store = api.runtime().store
        data["batches"] = [b.model_dump(by_alias=True) for b in store.batches(job.job_id)]
        data["rejected_samples"] = store.reject_samples(job.job_id)
    return data


STATUS_COLOUR = {
    "succeeded": "green",
    "dry_run": "green",
    "held": "yellow",
    "running": "cyan",
    "queued": "cyan",
    "waiting": "cyan",
    "superseded": "dim",
}


def _print_summary(job: JobRecord) -> None:
    colour = STATUS_COLOUR.get(job.status, "red")
    out.print(
        f"[bold]{job.job_id}[/bold] [{colour}]{job.status}[/{colour}]  {job.destination_id}/{job.audience_id}"
        f"  created {_ts(job.created_at)}  finished {_ts(job.finished_at)}",
        highlight=False,
    )
    if job.message:
        out.print(f"  {job.message}", highlight=False)
    for key, value in job.summary().items():
        if isinstance(value, dict):
            out.print(
                f"  {key:18} " + ", ".join(f"{k}={v}" for k, v in value.items()), highlight=False
            )
        else:
            out.print(f"  {key:18} {value}", highlight=False)
    if job.counts.get("matched") is not None and job.count("synced_ids"):
        out.print(
            f"  match rate         {job.count('matched') / job.count('synced_ids'):.1%}",
            highlight=False,
        )


@cli.command()
def status(
    job_id: str,
    json_: JsonOpt = False,
    batches: Annotated[bool, typer.Option(help="Include every batch record")] = False,
    follow: Annotated[
        bool, typer.Option(help="Show live progress until the job is at rest")
    ] = False,
) -> None:
    """One job: status, counts, and (with --batches) every batch."""
    if follow:
        _progress(job_id, 86_400)
    job = api.job(job_id)
    if job is None:
        _fail(f"unknown job {job_id!r}")
        return
    if json_:
        _print_json(_job_dict(job, batches))
        return
    _print_summary(job)
    if batches:
        table = Table(
            "batch",
            "action",
            "schema",
            "size",
            "state",
            "attempts",
            "failures",
            "throttled s",
            "code",
            "request id",
            "poison id",
        )
        for b in api.runtime().store.batches(job_id):
            table.add_row(
                b.batch_id,
                b.action,
                b.schema_,
                str(b.size),
                b.state,
                str(b.attempts),
                str(b.failures),
                f"{b.rate_limited_seconds:.1f}",
                str(b.last_code if b.last_code is not None else "-"),
                b.request_id or "-",
                b.poison_id[:16] + "…" if b.poison_id else "-",
            )
        out.print(table)


@cli.command()
def jobs(
    audience: Annotated[str | None, typer.Option()] = None,
    destination: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 20,
    json_: JsonOpt = False,
) -> None:
    """Recent jobs, newest first."""
    records = api.runtime().store.jobs(destination, audience, limit)
    if json_:
        _print_json([_job_dict(j) for j in records])
        return
    table = Table(
        "job",
        "status",
        "destination",
        "audience",
        "created",
        "took",
        "rows",
        "adds",
        "removes",
        "batches ok",
        "failed",
    )
    for j in records:
        colour = STATUS_COLOUR.get(j.status, "red")
        took = (
            f"{(j.finished_at or time.time()) - (j.started_at or j.created_at):.0f}s"
            if j.started_at
            else "-"
        )
        failed = j.count("batches_failed") + j.count("batches_parked")
        table.add_row(
            j.job_id,
            f"[{colour}]{j.status}[/{colour}]",
            j.destination_id,
            j.audience_id,
            _ts(j.created_at),
            took,
            f"{j.count('rows_read'):,}",
            f"{_sum(j, 'adds'):,}",
            f"{_sum(j, 'removes'):,}",
            f"{j.count('batches_succeeded')}/{j.count('batches_total')}",
            f"[red]{failed}[/red]" if failed else "0",
        )
    out.print(table)


@cli.command()
def approve(job_id: str) -> None:
    """Send a held job (mass-delete guard) as it is."""
    _guard(api.approve, job_id)
    print(f"{job_id}: approved, re-enqueued")


@cli.command()
def resume(job_id: str) -> None:
    """Send an auth_failed job's parked batches (after update-token), or re-drive a stuck job."""
    _guard(api.resume, job_id)
    print(f"{job_id}: resumed")


# -- auth ---------------------------------------------------------------------------------------------------
@auth_cli.command("exchange")
def auth_exchange(
    auth_code: Annotated[
        str, typer.Option(help="The auth_code from TikTok's redirect (single use, ~10 min)")
    ],
    destination: Annotated[
        str | None, typer.Option(help="Store the token on this destination")
    ] = None,
    show_token: Annotated[
        bool, typer.Option(help="Print the access token (a secret: keep it out of logs)")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Exchange an auth code for an access token (TIKTOK_APP_ID / TIKTOK_APP_SECRET from settings)."""
    rt = api.runtime()
    from worker.tiktok import TikTokError

    # Checked before the single-use code is spent.
    dest = _guard(rt.store.require_destination, destination) if destination else None
    try:
        data = rt.client.exchange_auth_code(auth_code)
    except TikTokError as error:
        if any(word in error.message.lower() for word in ("secret", "app_id", "app id")):
            _fail(
                f"TikTok refused the app credentials: {error}. Check TIKTOK_APP_ID and TIKTOK_APP_SECRET "
                "(your TikTok app's id and secret); the auth code was not used and stays valid until it "
                "expires (about 10 minutes after it was issued)."
            )
        _fail(
            f"TikTok refused the auth code: {error}. Auth codes are single-use and expire after about "
            "10 minutes: ask the advertiser to authorise the app again and send the new code at once."
        )
        return
    advertisers = [str(a) for a in data.get("advertiser_ids", [])]
    if show_token and not json_:
        print(f"access token: {data['access_token']}")
    if dest is not None:
        if dest.advertiser_id not in advertisers:
            _fail(
                f"the token grants advertiser(s) {', '.join(advertisers) or 'none'}, not {dest.advertiser_id} "
                f"of destination {dest.id}: token NOT stored. Ask the advertiser to authorise the app for "
                "that ad account"
                + ("" if show_token else " (or use --show-token to keep this token)")
                + "."
            )
        _guard(api.update_token, dest.id, data["access_token"])
    if json_:
        _print_json(
            {
                "advertiser_ids": advertisers,
                "stored_on": destination,
                **({"access_token": data["access_token"]} if show_token else {}),
            }
        )
    else:
        print("advertiser ids granted: " + (", ".join(advertisers) or "none"))
        if destination:
            print(f"token stored on destination {destination}")
        else:
            print("token not stored: pass --destination D, or create one with `destination add`")


def main() -> None:
    # Command groups that live in their own modules register themselves on `cli` when imported.
    # (Imported by name so that `python -m worker.cli` and the console script share one `cli`.)
    import worker.cli_admin
    import worker.cli_ops  # noqa: F401
    from worker.cli import cli as root

    root()


if __name__ == "__main__":
    main()
