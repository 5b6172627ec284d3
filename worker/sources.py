"""Member sources: stream an audience snapshot (CSV or NDJSON, plain or gzip, local file or HTTP)
into ``Member`` rows and counted ``RejectedRow``s, in memory that does not grow with the file.

Contract (see DESIGN.md "Member sources"):

* ``open_source(uri)`` accepts a plain path, a ``file://`` URI or an ``http(s)://`` URL. Gzip is
  detected by its magic bytes (a ``.gz`` name without them is an error, unless an HTTP server
  already removed a ``Content-Encoding: gzip``). The format is ``fmt``, else the name suffix
  (``.csv``, ``.ndjson``, ``.jsonl``, optionally followed by ``.gz``), else sniffed from the first
  non-blank byte (``{`` means NDJSON).
* Anything that makes the snapshot incomplete raises ``SourceError`` (from ``open_source`` or
  while iterating): a partial snapshot would look like mass removals, so the job must fail.
* A bad row never raises: it is yielded as a ``RejectedRow`` with a reason from
  ``REJECT_REASONS``. Details never contain row content (it may be personal data).
* ``Member.line`` is the 1-based number of the non-blank *data* row (the CSV header and blank
  lines are not counted). When reading a ``byte_range`` part, numbers restart at 1 in every part.
* An empty NDJSON file is a valid, empty audience (the deletion guard decides what to do with
  it); an empty CSV file has no header and is a ``SourceError``.
* CSV rows are single lines: quoted fields with embedded newlines are not supported (such a row
  is rejected as ``bad_csv``). Quoting is strict (``"a" ,b`` is ``bad_csv``).
"""

from __future__ import annotations

import csv
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from types import TracebackType
from typing import BinaryIO, cast
from urllib.parse import unquote, urlsplit

import requests
import urllib3

FIELDS = (
    "user_id",
    "email",
    "phone",
    "idfa",
    "gaid",
    "email_sha256",
    "phone_sha256",
    "idfa_sha256",
    "gaid_sha256",
    "consent",
)
IDENTIFIER_FIELDS = FIELDS[1:9]
FORMATS = ("csv", "ndjson")
_FORMAT_ALIASES = {"csv": "csv", "ndjson": "ndjson", "jsonl": "ndjson"}

REJECT_REASONS = (
    "line_too_long",  # longer than max_line_bytes; skipped without buffering it
    "bad_utf8",  # not valid UTF-8
    "binary_data",  # contains NUL bytes
    "bad_csv",  # CSV quoting error (unterminated quote, text after a closing quote)
    "wrong_column_count",  # CSV row with a different number of fields than the header
    "bad_json",  # NDJSON line that is not JSON (or nested too deeply)
    "not_an_object",  # NDJSON value that is not an object
    "bad_value_type",  # identifier / user_id value of an unusable JSON type
    "bad_consent",  # consent value that is neither a yes nor a no
)

CHUNK_SIZE = 1 << 20  # raw read size; also the cap on one gzip decompression step
MIN_SPLIT_BYTES = 1 << 20  # below this, parallel reading costs more than it saves
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_WS = b" \t\r\n\x0b\x0c"

_FIELD_SET = frozenset(FIELDS)
_ID_SET = frozenset(IDENTIFIER_FIELDS)
_CONSENT_WORDS: dict[str, bool] = {
    "": True,
    "true": True,
    "1": True,
    "yes": True,
    "y": True,
    "t": True,
    "false": False,
    "0": False,
    "no": False,
    "n": False,
    "f": False,
}


@dataclass(slots=True)
class Member:
    line: int  # 1-based data row number (part-relative for byte_range reads)
    user_id: str | None
    identifiers: dict[str, list[str]]  # identifier field -> raw, trimmed, non-empty values
    consent: bool


@dataclass(slots=True)
class RejectedRow:
    line: int
    reason: str  # one of REJECT_REASONS
    detail: str  # short human text, never the row content


class SourceError(Exception):
    """The snapshot cannot be read completely (missing file, unreachable URL, HTTP error, unknown
    format, empty/missing header, truncated .gz, connection lost mid-stream). The job must fail
    WITHOUT syncing: a partial snapshot would look like mass removals."""


Row = Member | RejectedRow


# --------------------------------------------------------------------------------------------
# URIs and raw byte streams


def _redact(url: str) -> str:
    """URL without credentials, query or fragment: signed URLs carry secrets there."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return f"{p.scheme}://{host}{p.path}"


def _parse_uri(uri: str) -> tuple[str, str, str]:
    """Return (kind, target, name): kind "http" or "file"; name is used for suffix rules."""
    p = urlsplit(uri)
    scheme = p.scheme.lower()
    if scheme in ("http", "https"):
        return "http", uri, p.path
    if scheme == "file":
        if p.netloc not in ("", "localhost"):
            raise SourceError(f"file URI with a remote host is not supported: {uri!r}")
        path = unquote(p.path)
        return "file", path, path
    if scheme and len(scheme) > 1 and not os.path.exists(uri):
        raise SourceError(f"unsupported URI scheme {scheme!r} (use a path, file:// or http(s)://)")
    return "file", uri, uri


def _format_from_name(name: str) -> tuple[str | None, bool]:
    """(format or None, has .gz suffix) from a file name or URL path."""
    low = name.lower()
    gz = low.endswith(".gz")
    if gz:
        low = low[:-3]
    if low.endswith(".csv"):
        return "csv", gz
    if low.endswith((".ndjson", ".jsonl")):
        return "ndjson", gz
    return None, gz


def _check_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    known = _FORMAT_ALIASES.get(fmt.strip().lower())
    if known is None:
        raise SourceError(
            f"unknown source format {fmt!r}; known formats: {', '.join(_FORMAT_ALIASES)}"
        )
    return known


def _file_chunks(f: BinaryIO, label: str) -> Iterator[bytes]:
    try:
        while chunk := f.read(CHUNK_SIZE):
            yield chunk
    except OSError as exc:
        raise SourceError(f"cannot read {label}: {exc.strerror or exc}") from exc


def _range_chunks(f: BinaryIO, label: str, start: int, end: int) -> Iterator[bytes]:
    """Bytes of the lines that START in [start, end): a line belongs to the part where it starts."""
    try:
        pos = start
        if start > 0:
            # The line starting at `start` is ours only if byte start-1 ends the previous line.
            f.seek(start - 1)
            pos = start - 1
            while True:
                chunk = f.read(CHUNK_SIZE)
                if not chunk:
                    return
                nl = chunk.find(b"\n")
                if nl >= 0:
                    pos += nl + 1
                    break
                pos += len(chunk)
            f.seek(pos)
        remaining = end - pos
        if remaining <= 0:
            return
        last = b""
        while remaining > 0:
            chunk = f.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            last = chunk
            yield chunk
        if last.endswith(b"\n"):
            return
        # Finish the last line, which started before `end`.
        while chunk := f.read(CHUNK_SIZE):
            nl = chunk.find(b"\n")
            if nl >= 0:
                yield chunk[: nl + 1]
                return
            yield chunk
    except OSError as exc:
        raise SourceError(f"cannot read {label}: {exc.strerror or exc}") from exc


def _http_get(url: str, timeout: float) -> requests.Response:
    try:
        resp = requests.get(url, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        raise SourceError(f"cannot fetch {_redact(url)}: {type(exc).__name__}") from exc
    if not 200 <= resp.status_code < 300:
        resp.close()
        raise SourceError(f"HTTP {resp.status_code} {resp.reason or ''} from {_redact(url)}")
    return resp


def _http_chunks(resp: requests.Response, label: str) -> Iterator[bytes]:
    try:
        # decode_content removes a transport Content-Encoding; urllib3 enforces Content-Length,
        # so a connection closed early raises instead of looking like a short file.
        for chunk in resp.raw.stream(CHUNK_SIZE, decode_content=True):
            if chunk:
                yield chunk
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise SourceError(f"connection lost while reading {label}: {type(exc).__name__}") from exc


def _gather(chunks: Iterator[bytes], n: int) -> tuple[bytes, Iterator[bytes]]:
    """First >= n bytes (fewer at EOF) and an iterator that still yields everything."""
    head = b""
    while len(head) < n:
        chunk = next(chunks, None)
        if chunk is None:
            break
        head += chunk
    return head, chain((head,) if head else (), chunks)


def _gunzip(chunks: Iterator[bytes], label: str) -> Iterator[bytes]:
    """Stream-decompress (multi-member) gzip, at most CHUNK_SIZE output per step (zip bombs)."""
    d: zlib._Decompress | None = None
    try:
        for data in chunks:
            while data:
                if d is None:
                    # Between members: zero padding is tolerated, as the gzip module does.
                    data = data.lstrip(b"\x00")
                    if not data:
                        break
                    d = zlib.decompressobj(wbits=47)
                while True:
                    out = d.decompress(data, CHUNK_SIZE)
                    if out:
                        yield out
                    if d.eof:
                        data = d.unused_data  # maybe the next member
                        d = None
                        break
                    data = d.unconsumed_tail
                    if not data and len(out) < CHUNK_SIZE:
                        break  # all input used and no output held back: need more input
    except zlib.error as exc:
        raise SourceError(f"gzip stream of {label} is corrupt: {exc}") from exc
    if d is not None:
        raise SourceError(f"gzip stream of {label} is truncated")


def _sniff(chunks: Iterator[bytes]) -> tuple[str | None, int, Iterator[bytes]]:
    """(format from the first non-blank byte or None if none, bytes dropped, rest of stream).

    Whitespace-only chunks before the first content are dropped so that a file of millions of
    blank lines does not get buffered here; the count lets callers keep byte offsets exact.
    """
    pending: list[bytes] = []
    dropped = 0
    first = True
    for chunk in chunks:
        pending.append(chunk)
        data = chunk[3:] if first and chunk.startswith(_BOM) else chunk
        first = False
        stripped = data.lstrip(_WS)
        if stripped:
            fmt = "ndjson" if stripped[:1] == b"{" else "csv"
            return fmt, dropped, chain(pending, chunks)
        dropped += sum(len(c) for c in pending)
        pending = []
    return None, dropped, iter(())


# --------------------------------------------------------------------------------------------
# Lines


def _line_batches(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[list[bytes | None]]:
    """Split a byte stream on b"\\n" into batches of lines (without the b"\\n").

    ``None`` stands for a line longer than ``max_line_bytes`` which was skipped chunk by chunk,
    never held in memory. Lines in a batch may still exceed the limit (the consumer checks).
    """
    carry = b""
    skipping = False
    for chunk in chunks:
        if skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                continue
            skipping = False
            chunk = chunk[nl + 1 :]
        elif carry:
            chunk = carry + chunk
        lines = cast("list[bytes | None]", chunk.split(b"\n"))
        carry = cast(bytes, lines.pop())
        if len(carry) > max_line_bytes:
            carry = b""
            skipping = True
            lines.append(None)
        if lines:
            yield lines
    if carry:
        yield [carry]


def _strip_first_bom(batches: Iterator[list[bytes | None]]) -> Iterator[list[bytes | None]]:
    for batch in batches:
        if batch:
            first = batch[0]
            if first is not None and first.startswith(_BOM):
                batch[0] = first[3:]
            yield batch
            break
    yield from batches


def _take_header(
    batches: Iterator[list[bytes | None]], max_line_bytes: int
) -> tuple[bytes | None, int, Iterator[list[bytes | None]]]:
    """(first non-blank line or None, bytes consumed through it incl. b"\\n", remaining lines)."""
    consumed = 0
    for batch in batches:
        for k, raw in enumerate(batch):
            if raw is None or len(raw) > max_line_bytes:
                raise SourceError(f"CSV header line is longer than {max_line_bytes} bytes")
            consumed += len(raw) + 1
            if raw.strip(_WS):
                return raw, consumed, chain((batch[k + 1 :],), batches)
    return None, consumed, iter(())


def _parse_header(raw: bytes) -> list[str]:
    if raw.startswith(_BOM):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError("CSV header is not valid UTF-8 (binary file?)") from None
    if "\x00" in text:
        raise SourceError("CSV header contains NUL bytes (binary file?)")
    try:
        names = next(csv.reader((text.rstrip("\r"),), strict=True, skipinitialspace=True))
    except csv.Error as exc:
        raise SourceError(f"CSV header is malformed: {exc}") from None
    names = [n.strip().lower() for n in names]
    if not any(names):
        raise SourceError("CSV header is empty")
    seen: set[str] = set()
    for n in names:
        if n and n in seen:
            raise SourceError(f"CSV header has duplicate column {n!r}")
        seen.add(n)
    if not seen & _ID_SET:
        # Do not echo the header: without one, it is the first data row (personal data).
        raise SourceError(
            f"CSV header has {len(names)} columns but no identifier column "
            f"(expected at least one of: {', '.join(IDENTIFIER_FIELDS)})"
        )
    return names


# --------------------------------------------------------------------------------------------
# Rows


def _too_long(n: int, max_line_bytes: int) -> RejectedRow:
    return RejectedRow(n, "line_too_long", f"line longer than {max_line_bytes} bytes")


def _csv_rows(
    batches: Iterable[list[bytes | None]], names: list[str], max_line_bytes: int
) -> Iterator[Row]:
    ncols = len(names)
    index = {name: i for i, name in enumerate(names) if name in _FIELD_SET}
    id_cols = [(name, index[name]) for name in IDENTIFIER_FIELDS if name in index]
    uid_idx = index.get("user_id")
    consent_idx = index.get("consent")
    words = _CONSENT_WORDS
    reader = csv.reader
    n = 0
    for batch in batches:
        for raw in batch:
            if raw is None or len(raw) > max_line_bytes:
                n += 1
                yield _too_long(n, max_line_bytes)
                continue
            try:
                s = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                n += 1
                yield RejectedRow(n, "bad_utf8", f"invalid UTF-8 at byte {exc.start}")
                continue
            if s[-1:] == "\r":
                s = s[:-1]
            if not s or s.isspace():
                continue
            n += 1
            if "\x00" in s:
                yield RejectedRow(n, "binary_data", "line contains NUL bytes")
                continue
            if '"' in s:  # slow path only when quoting is involved
                try:
                    fields = next(reader((s,), strict=True, skipinitialspace=True))
                except csv.Error as exc:
                    yield RejectedRow(n, "bad_csv", f"malformed quoting: {exc}")
                    continue
            else:
                fields = s.split(",")
            if len(fields) != ncols:
                yield RejectedRow(
                    n, "wrong_column_count", f"expected {ncols} columns, got {len(fields)}"
                )
                continue
            consent = True
            if consent_idx is not None:
                value = fields[consent_idx]
                c = words.get(value)
                if c is None:
                    c = words.get(value.strip().lower())
                    if c is None:
                        yield RejectedRow(n, "bad_consent", "consent is not a yes/no value")
                        continue
                consent = c
            ids: dict[str, list[str]] = {}
            for name, idx in id_cols:
                value = fields[idx]
                if value:
                    value = value.strip()
                    if value:
                        ids[name] = [value]
            uid = None
            if uid_idx is not None:
                uid = fields[uid_idx].strip() or None
            yield Member(n, uid, ids, consent)


_JSON_TYPE = {dict: "object", list: "array", str: "string", int: "number", float: "number"}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _json_consent(value: object) -> bool | None:
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return {0: False, 1: True}.get(value)  # type: ignore[call-overload]
    if isinstance(value, str):
        c = _CONSENT_WORDS.get(value)
        return c if c is not None else _CONSENT_WORDS.get(value.strip().lower())
    return None


def _object_row(obj: object, n: int) -> Row:
    """Validate one NDJSON / inline object."""
    if type(obj) is not dict:
        return RejectedRow(n, "not_an_object", f"expected an object, got {_json_type(obj)}")
    uid: str | None = None
    ids: dict[str, list[str]] = {}
    consent = True
    for key, value in obj.items():
        field = key
        if field not in _FIELD_SET:
            field = key.strip().lower() if isinstance(key, str) else ""
            if field not in _FIELD_SET:
                continue  # unknown keys are ignored, like unknown CSV columns
        if value is None:
            continue  # null is "missing"
        if field == "consent":
            c = _json_consent(value)
            if c is None:
                return RejectedRow(n, "bad_consent", "consent is not a yes/no value")
            consent = c
        elif field == "user_id":
            if isinstance(value, str):
                uid = value.strip() or None
            elif type(value) is int:
                uid = str(value)
            else:
                return RejectedRow(
                    n, "bad_value_type", f"user_id must be a string, got {_json_type(value)}"
                )
        else:
            values = value if type(value) is list else (value,)
            out = ids.get(field)
            for v in values:
                if isinstance(v, str):
                    v = v.strip()
                    if not v:
                        continue
                elif field == "phone" and type(v) is int:
                    v = str(v)  # exporters write phone numbers as JSON numbers
                elif v is None:
                    continue
                else:
                    return RejectedRow(
                        n,
                        "bad_value_type",
                        f"{field} must be a string or a list of strings, got {_json_type(v)}",
                    )
                if out is None:
                    out = ids[field] = []
                out.append(v)
    return Member(n, uid, ids, consent)


def _ndjson_rows(batches: Iterable[list[bytes | None]], max_line_bytes: int) -> Iterator[Row]:
    loads = json.loads
    n = 0
    for batch in batches:
        for raw in batch:
            if raw is None or len(raw) > max_line_bytes:
                n += 1
                yield _too_long(n, max_line_bytes)
                continue
            try:
                s = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                n += 1
                yield RejectedRow(n, "bad_utf8", f"invalid UTF-8 at byte {exc.start}")
                continue
            if not s or s.isspace():
                continue
            n += 1
            if "\x00" in s:
                yield RejectedRow(n, "binary_data", "line contains NUL bytes")
                continue
            try:
                obj = loads(s)
            except json.JSONDecodeError as exc:
                yield RejectedRow(n, "bad_json", f"{exc.msg} at column {exc.colno}")
                continue
            except (ValueError, RecursionError) as exc:  # huge ints, absurd nesting
                yield RejectedRow(n, "bad_json", f"invalid JSON ({type(exc).__name__})")
                continue
            yield _object_row(obj, n)


def iter_inline(members: Iterable[object]) -> Iterator[Row]:
    """Rows from a small inline list (upstream services); same validation as NDJSON objects.

    ``line`` is the 1-based position in the list.
    """
    for n, obj in enumerate(members, 1):
        yield _object_row(obj, n)


# --------------------------------------------------------------------------------------------
# Public entry points


class MemberSource:
    """An open snapshot: iterate it once (``for row in src``), then close it (or use ``with``)."""

    format: str

    def __init__(self, fmt: str, rows: Iterator[Row], closers: list[Callable[[], object]]):
        self.format = fmt
        self._closers = closers
        self._rows = self._run(rows)

    def _run(self, rows: Iterator[Row]) -> Iterator[Row]:
        try:
            yield from rows
        finally:
            self._release()

    def _release(self) -> None:
        closers, self._closers = self._closers, []
        for close in closers:
            close()

    def __iter__(self) -> Iterator[Row]:
        return self._rows  # single pass: a second iteration continues where the first stopped

    def __next__(self) -> Row:
        return next(self._rows)

    def close(self) -> None:
        self._rows.close()
        self._release()

    def __enter__(self) -> MemberSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_file(path: str) -> BinaryIO:
    try:
        return open(path, "rb")  # closed by MemberSource
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror or exc}") from exc


def open_source(
    uri: str,
    fmt: str | None = None,
    *,
    max_line_bytes: int = 1 << 20,
    byte_range: tuple[int, int] | None = None,
    http_timeout: float = 30.0,
) -> MemberSource:
    """Open a member snapshot for streaming. Raises ``SourceError`` when it cannot be read.

    ``byte_range=(start, end)`` (uncompressed local files only) reads the lines that start in
    [start, end); the CSV header is always read from offset 0. Row numbers restart at 1 per part.
    """
    if max_line_bytes < 1:
        raise ValueError("max_line_bytes must be positive")
    if byte_range is not None and not 0 <= byte_range[0] <= byte_range[1]:
        raise ValueError(f"invalid byte_range {byte_range!r}")
    wanted = _check_format(fmt)
    kind, target, name = _parse_uri(uri)
    name_fmt, name_gz = _format_from_name(name)
    closers: list[Callable[[], object]] = []
    try:
        transport_decoded = False
        if kind == "http":
            if byte_range is not None:
                raise SourceError("byte_range is only supported for uncompressed local files")
            label = _redact(target)
            resp = _http_get(target, http_timeout)
            closers.append(resp.close)
            transport_decoded = "gzip" in resp.headers.get("Content-Encoding", "").lower()
            raw = _http_chunks(resp, label)
        else:
            label = target
            f = _open_file(target)
            closers.append(f.close)
            raw = _file_chunks(f, label)
        head, raw = _gather(raw, 2)
        gz = head.startswith(_GZIP_MAGIC)
        if name_gz and not gz and not transport_decoded:
            if not head:
                raise SourceError(f"{label} is an empty .gz file (truncated?)")
            raise SourceError(f"{label} is named .gz but is not gzip data")
        if byte_range is not None and gz:
            raise SourceError("byte_range is only supported for uncompressed local files")
        chunks = raw
        if gz:
            _, chunks = _gather(_gunzip(raw, label), 4)  # a whole BOM in the first chunk
        sniffed, dropped, chunks = _sniff(chunks)
        fmt_final = wanted or name_fmt or sniffed
        if fmt_final is None:
            raise SourceError(f"{label} is empty")
        batches = _line_batches(chunks, max_line_bytes)
        if fmt_final == "csv":
            header, consumed, batches = _take_header(batches, max_line_bytes)
            if header is None:
                raise SourceError(f"{label} has no CSV header (empty file)")
            names = _parse_header(header)
            if byte_range is not None:
                # Data lines start after the header; parts before it read nothing of it.
                closers.pop()()  # done with the offset-0 handle
                start = max(byte_range[0], dropped + consumed)
                f2 = _open_file(target)
                closers.append(f2.close)
                batches = _line_batches(
                    _range_chunks(f2, label, start, byte_range[1]), max_line_bytes
                )
            rows = _csv_rows(batches, names, max_line_bytes)
        else:
            if byte_range is not None:
                closers.pop()()
                f2 = _open_file(target)
                closers.append(f2.close)
                batches = _line_batches(
                    _range_chunks(f2, label, byte_range[0], byte_range[1]), max_line_bytes
                )
                if byte_range[0] == 0:
                    batches = _strip_first_bom(batches)
            else:
                batches = _strip_first_bom(batches)
            rows = _ndjson_rows(batches, max_line_bytes)
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    return MemberSource(fmt_final, rows, closers)


def split_ranges(uri: str, parts: int) -> list[tuple[int, int]] | None:
    """Byte ranges covering the file for ``parts`` parallel ``open_source(byte_range=...)`` reads.

    None when the source cannot be split: HTTP, gzip, files under ``MIN_SPLIT_BYTES``, or a file
    that cannot be opened (``open_source`` then reports the error). Boundaries need not fall on
    line ends: each line belongs to the part where it starts.
    """
    if parts < 1:
        raise ValueError("parts must be >= 1")
    try:
        kind, target, name = _parse_uri(uri)
    except SourceError:
        return None
    if kind != "file" or name.lower().endswith(".gz"):
        return None
    try:
        size = os.path.getsize(target)
        with open(target, "rb") as f:
            magic = f.read(2)
    except OSError:
        return None
    if size < MIN_SPLIT_BYTES or magic == _GZIP_MAGIC:
        return None
    parts = min(parts, size)
    return [(size * k // parts, size * (k + 1) // parts) for k in range(parts)]
