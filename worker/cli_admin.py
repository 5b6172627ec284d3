"""Admin commands of `tiktok-sync`: destination/audience updates, the identity graph (ID
extension), the global suppression list, and delta jobs from files. Registered on the main CLI.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.table import Table

from worker import api
from worker.cli import (
    DestinationOpt,
    DryRunOpt,
    EveryOpt,
    JobIdOpt,
    JsonOpt,
    ScheduleMembersOpt,
    TimeoutOpt,
    WaitOpt,
    _enqueue,
    _fail,
    _guard,
    _print_json,
    audience_cli,
    cli,
    destination_cli,
    out,
)
from worker.models import JobStatus
from worker.sources import Member, RejectedRow, SourceError, iter_inline, open_source

idgraph_cli = typer.Typer(
    help="The identity graph used by ID extension (user_id -> identifiers).", no_args_is_help=True
)
cli.add_typer(idgraph_cli, name="idgraph")

DELTA_MAX_ROWS = 100_000  # a delta job carries its members in the job record: bigger -> snapshot
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}

EmailOpt = Annotated[
    list[str] | None, typer.Option("--email", help="An email address (repeatable)")
]
PhoneOpt = Annotated[list[str] | None, typer.Option("--phone", help="A phone number, E.164 best")]
IdfaOpt = Annotated[list[str] | None, typer.Option("--idfa", help="An IDFA (repeatable)")]
GaidOpt = Annotated[list[str] | None, typer.Option("--gaid", help="A GAID / AAID (repeatable)")]
FileOpt = Annotated[str | None, typer.Option("--file", help="CSV/NDJSON with identifier columns")]
RegionOpt = Annotated[str | None, typer.Option(help="Region of phones without a country code")]


def parse_duration(text: str) -> float:
    """Seconds from "90", "30s", "15m", "6h" or "1d"."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"bad duration {text!r}: use seconds (3600) or 30m, 6h, 1d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@contextlib.contextmanager
def _identifier_rows(
    email: list[str] | None,
    phone: list[str] | None,
    idfa: list[str] | None,
    gaid: list[str] | None,
    file: str | None,
) -> Iterator[Iterator[Member | RejectedRow]]:
    """The identifiers given as options and/or in a file, as member rows."""
    given = {
        k: v for k, v in {"email": email, "phone": phone, "idfa": idfa, "gaid": gaid}.items() if v
    }
    if not given and not file:
        _fail("name at least one identifier (--email, --phone, --idfa, --gaid) or a --file")

    def rows(source: Any) -> Iterator[Member | RejectedRow]:
        if given:
            yield from iter_inline([given])
        if source is not None:
            yield from source

    if file is None:
        yield rows(None)
        return
    try:
        with open_source(file) as source:
            yield rows(source)
    except SourceError as error:
        _fail(f"cannot read {file}: {error}")


def _counts_line(counts: Counter | dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v) or "nothing"


# -- destination update ---------------------------------------------------------------------------
@destination_cli.command("update")
def destination_update(
    destination_id: str,
    name: Annotated[str | None, typer.Option(help="New name")] = None,
    identifiers: Annotated[
        str | None, typer.Option(help="Identifiers sent: any of email,phone,idfa,gaid")
    ] = None,
    phone_region: Annotated[
        str | None, typer.Option(help="Default phone region ('' clears it)")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Requests/s budget (0: the default)")] = None,
    json_: JsonOpt = False,
) -> None:
    """Change a destination's name, mapping, phone region or rate (the token: `update-token`)."""
    if name is None and identifiers is None and phone_region is None and rate is None:
        _fail("nothing to change: give --name, --identifiers, --phone-region or --rate")
    ids = (
        [i.strip() for i in identifiers.split(",") if i.strip()]
        if identifiers is not None
        else None
    )
    dest = _guard(
        api.update_destination,
        destination_id,
        name=name,
        identifiers=ids,
        phone_region=phone_region,
        rate_per_second=rate,
    )
    if json_:
        _print_json(dest.model_dump())
    else:
        print(
            f"destination {dest.id} updated: name={dest.name!r} "
            f"identifiers={','.join(dest.identifiers)} region={dest.phone_region or '-'} "
            f"rate={dest.rate_per_second or 'default'}"
        )


# -- audience update ------------------------------------------------------------------------------
@audience_cli.command("update")
def audience_update(
    audience_id: str,
    destination: DestinationOpt,
    members: ScheduleMembersOpt = None,
    every: EveryOpt = None,
    no_schedule: Annotated[
        bool, typer.Option("--no-schedule", help="Stop scheduled refreshes")
    ] = False,
    id_extension: Annotated[
        bool | None,
        typer.Option("--id-extension/--no-id-extension", help="Add identity-graph identifiers"),
    ] = None,
) -> None:
    """Change a link's schedule or ID extension."""
    link = _guard(
        api.update_link,
        destination,
        audience_id,
        members_uri=members,
        refresh_every_seconds=_guard(parse_duration, every) if every else None,
        id_extension=id_extension,
        clear_schedule=no_schedule,
    )
    every_text = (
        f"every {link.refresh_every_seconds:g}s from {link.members_uri}"
        if link.refresh_every_seconds
        else "no schedule"
    )
    print(
        f"audience {audience_id}: {every_text}, id extension {'on' if link.id_extension else 'off'}"
    )


# -- identity graph -------------------------------------------------------------------------------
@idgraph_cli.command("load")
def idgraph_load(
    file: Annotated[
        str, typer.Argument(help="CSV/NDJSON: user_id plus email, phone, idfa, gaid (or *_sha256)")
    ],
    replace: Annotated[
        bool, typer.Option(help="Replace the whole graph (default: merge into it)")
    ] = False,
    phone_region: RegionOpt = None,
    format: Annotated[
        str | None, typer.Option(help="csv or ndjson (default: from the name)")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Load identity-graph rows (stored hashed); links with --id-extension use them."""
    from worker.idgraph import Graph

    try:
        counts = Graph(api.runtime()).load(file, fmt=format, region=phone_region, replace=replace)
    except SourceError as error:
        _fail(f"cannot read {file}: {error}. The graph is unchanged.")
        return
    except ValueError as error:
        _fail(str(error))
        return
    info = Graph(api.runtime()).info()
    if json_:
        _print_json({"counts": dict(counts), "graph": info})
    else:
        print(f"loaded {file}: {_counts_line(counts)}")
        print(f"graph: {info['users']} users")


@idgraph_cli.command("info")
def idgraph_info(json_: JsonOpt = False) -> None:
    """Size and origin of the identity graph."""
    from worker.idgraph import Graph

    info = Graph(api.runtime()).info()
    if json_:
        _print_json(info)
    else:
        for key, value in sorted(info.items()):
            out.print(f"{key:12} {value}", highlight=False)


@idgraph_cli.command("show")
def idgraph_show(user_id: str) -> None:
    """One user's graph identifiers (as the SHA-256 hashes sent to TikTok)."""
    from worker.idgraph import Graph

    ids = Graph(api.runtime()).get(user_id)
    if not ids:
        _fail(f"user {user_id!r} is not in the identity graph")
    _print_json(ids)


@idgraph_cli.command("clear")
def idgraph_clear(yes: Annotated[bool, typer.Option("--yes", help="Confirm")] = False) -> None:
    """Drop the identity graph (extended links then send members' own identifiers only)."""
    from worker.idgraph import Graph

    if not yes:
        _fail("this drops the whole identity graph: add --yes")
    Graph(api.runtime()).clear()
    print("identity graph cleared")


# -- suppression ----------------------------------------------------------------------------------
@cli.command()
def suppress(
    email: EmailOpt = None,
    phone: PhoneOpt = None,
    idfa: IdfaOpt = None,
    gaid: GaidOpt = None,
    file: FileOpt = None,
    phone_region: RegionOpt = None,
    reason: Annotated[
        str, typer.Option(help="Why (kept in the audit trail), e.g. a request id")
    ] = "",
    wait: Annotated[bool, typer.Option(help="Wait until the deletions are done")] = False,
    timeout: TimeoutOpt = 600,
    json_: JsonOpt = False,
) -> None:
    """Exclude identifiers from every audience, and delete them now wherever they were synced."""
    from worker.suppression import Suppressions

    with _identifier_rows(email, phone, idfa, gaid, file) as rows:
        result = _guard(
            Suppressions(api.runtime()).suppress, rows, region=phone_region, reason=reason
        )
    finished = {}
    if wait:
        for info in result.audiences:
            if info.get("job_id"):
                finished[info["job_id"]] = api.wait_for(info["job_id"], timeout=timeout)
    if json_:
        data = result.as_dict()
        for info in data["audiences"]:
            job = finished.get(info.get("job_id") or "")
            if job is not None:
                info["status"] = str(job.status)
        _print_json(data)
    else:
        print(f"{result.entry_id}: {_counts_line(result.counts)}")
        for info in result.audiences:
            job = finished.get(info.get("job_id") or "")
            state = f" -> {job.status}" if job is not None else ""
            print(
                f"  {info['destination_id']}/{info['audience_id']}: "
                f"{info['held']} synced ids to delete, "
                f"job {info.get('job_id') or info.get('error')}{state}"
            )
        if not result.audiences:
            print("  no audience holds them: nothing to delete")
    if any(job.status != JobStatus.SUCCEEDED for job in finished.values()):
        raise typer.Exit(1)


@cli.command()
def unsuppress(
    email: EmailOpt = None,
    phone: PhoneOpt = None,
    idfa: IdfaOpt = None,
    gaid: GaidOpt = None,
    file: FileOpt = None,
    phone_region: RegionOpt = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail)")] = "",
) -> None:
    """Take identifiers off the suppression list (the next refresh that has them sends them)."""
    from worker.suppression import Suppressions

    with _identifier_rows(email, phone, idfa, gaid, file) as rows:
        counts = _guard(
            Suppressions(api.runtime()).unsuppress, rows, region=phone_region, reason=reason
        )
    print(_counts_line(counts))


@cli.command()
def suppressed(
    email: EmailOpt = None,
    phone: PhoneOpt = None,
    idfa: IdfaOpt = None,
    gaid: GaidOpt = None,
    phone_region: RegionOpt = None,
    json_: JsonOpt = False,
) -> None:
    """The suppression list: sizes and pending deletions, or one identifier's audit trail."""
    from worker.suppression import Suppressions

    supp = Suppressions(api.runtime())
    if not (email or phone or idfa or gaid):
        summary = supp.summary()
        if json_:
            _print_json(summary)
            return
        print("suppressed: " + _counts_line(summary["suppressed"]))
        for item in summary["pending"]:
            where = f"{item['destination_id']}/{item['audience_id']}"
            print(f"  pending deletes {where}: {item['pending_deletes']}")
        table = Table("entry", "at", "reason", "counts", "audiences")
        for entry in summary["entries"]:
            table.add_row(
                entry["entry"],
                _when(entry["at"]),
                entry.get("reason") or "-",
                _counts_line(entry.get("counts", {})),
                str(len(entry.get("audiences", []))),
            )
        out.print(table)
        return
    with _identifier_rows(email, phone, idfa, gaid, None) as rows:
        trail = _guard(supp.trail, rows, region=phone_region)
    if json_:
        _print_json(trail)
        return
    for item in trail:
        state = "suppressed" if item["suppressed"] else "not suppressed"
        print(f"{item['id_schema']} {item['hash']}: {state}")
        for event in item["events"]:
            where = (
                f" {event['destination_id']}/{event['audience_id']}"
                f" (TikTok {event.get('tiktok_audience_id')})"
                if event.get("destination_id")
                else ""
            )
            job = f" job {event['job_id']}" if event.get("job_id") else ""
            print(f"  {_when(event['at'])} {event['event']}{where}{job}")


def _when(ts: float) -> str:
    from worker.cli import _ts

    return _ts(ts)


# -- delta jobs from files ------------------------------------------------------------------------
def _delta_rows(path: str | None, counts: Counter, label: str) -> list[dict[str, Any]]:
    if path is None:
        return []
    rows: list[dict[str, Any]] = []
    try:
        with open_source(path) as source:
            for row in source:
                if isinstance(row, RejectedRow):
                    counts[f"{label}_rows_invalid"] += 1
                    continue
                rows.append({"user_id": row.user_id, "consent": row.consent, **row.identifiers})
                if len(rows) > DELTA_MAX_ROWS:
                    _fail(
                        f"{path} has more than {DELTA_MAX_ROWS} rows: send a full snapshot instead "
                        "(`tiktok-sync refresh --members ...`)"
                    )
    except SourceError as error:
        _fail(f"cannot read {path}: {error}")
    return rows


@cli.command()
def delta(
    audience_id: str,
    destination: DestinationOpt,
    add: Annotated[str | None, typer.Option(help="Members to add (CSV/NDJSON)")] = None,
    remove: Annotated[str | None, typer.Option(help="Members to remove (CSV/NDJSON)")] = None,
    job_id: JobIdOpt = None,
    dry_run: DryRunOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600,
) -> None:
    """Enqueue a delta job: add and remove exactly the members named (the ledger stays exact)."""
    if add is None and remove is None:
        _fail("give --add FILE and/or --remove FILE")
    counts: Counter = Counter()
    additions = _delta_rows(add, counts, "add")
    removals = _delta_rows(remove, counts, "remove")
    if counts:
        out.print(f"skipped invalid rows: {_counts_line(counts)}", highlight=False)
    _enqueue(
        destination,
        audience_id,
        wait,
        timeout,
        additions=additions,
        removals=removals,
        job_id=job_id,
        dry_run=dry_run,
    )
