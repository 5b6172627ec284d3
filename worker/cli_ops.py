"""Operations commands of `tiktok-sync` (doctor, ...), registered on the main CLI."""

from __future__ import annotations

from worker.cli import cli  # noqa: F401
