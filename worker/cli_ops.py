"""Operations commands of `tiktok-sync` (doctor, metrics), registered on the main CLI."""

from __future__ import annotations

import sys
from typing import Annotated

import structlog
import typer

from config.settings import get_settings
from worker.cli import _print_json, cli, out

metrics_cli = typer.Typer(help="Prometheus metrics (counters kept in Redis).", no_args_is_help=True)
cli.add_typer(metrics_cli, name="metrics")

STYLE = {"ok": "green", "warn": "yellow", "FAIL": "bold red", "skip": "dim"}


@cli.command()
def doctor(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for workers and Redis")] = 2.0,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a report.")] = False,
) -> None:
    """Check Redis, the broker queues, live workers per queue, beat, TikTok and every token.

    Exits 1 when something is wrong, naming the cause and what to do.
    """
    from worker import doctor as checks

    report = checks.run(get_settings(), timeout=timeout)
    if json_:
        _print_json(checks.as_json(report))
    else:
        width = max(len(c.name) for c in report.checks)
        for c in report.checks:
            style = STYLE[c.level.value]
            out.print(
                f"[{style}]{c.level.value:4}[/{style}]  {c.name:{width}}  {c.detail}",
                highlight=False,
            )
        problems = len(report.problems)
        if problems:
            out.print(f"[bold red]{problems} problem(s) found[/bold red]", highlight=False)
        else:
            out.print("[green]all checks passed[/green]", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


@metrics_cli.command("serve")
def metrics_serve(
    port: Annotated[int | None, typer.Option(help="Port (default: METRICS_PORT)")] = None,
    address: Annotated[str, typer.Option(help="Address to listen on")] = "0.0.0.0",
) -> None:
    """Serve /metrics for Prometheus; every scrape reads Redis (run one or several)."""
    from worker import metrics

    settings = get_settings()
    port = settings.metrics_port if port is None else port
    structlog.get_logger(__name__).info("metrics_serving", url=f"http://{address}:{port}/metrics")
    metrics.serve(settings, port, address)


@metrics_cli.command("show")
def metrics_show() -> None:
    """Print the metrics once, in Prometheus' text format."""
    from prometheus_client import generate_latest

    from worker import metrics

    sys.stdout.write(generate_latest(metrics.registry(get_settings())).decode())
