"""Unit tests for worker.sources (streaming member snapshots) and scripts.gen_members.

HTTP cases use a real loopback ``http.server`` thread; everything else uses tmp_path files.
"""

from __future__ import annotations

import gzip
import http.server
import json
import socket
import threading
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from itertools import pairwise
from pathlib import Path
from unittest import mock

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts import gen_members
from worker import sources
from worker.sources import (
    FIELDS,
    IDENTIFIER_FIELDS,
    REJECT_REASONS,
    Member,
    RejectedRow,
    SourceError,
    iter_inline,
    open_source,
    split_ranges,
)

Row = Member | RejectedRow


def read_all(uri: str | Path, fmt: str | None = None, **kw: object) -> list[Row]:
    with open_source(str(uri), fmt, **kw) as src:  # type: ignore[arg-type]
        return list(src)


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def members(rows: list[Row]) -> list[Member]:
    return [r for r in rows if isinstance(r, Member)]


def rejected(rows: list[Row]) -> list[tuple[int, str]]:
    return [(r.line, r.reason) for r in rows if isinstance(r, RejectedRow)]


def key(row: Row) -> tuple:
    """Row identity without the (part-relative) line number."""
    if isinstance(row, Member):
        return (
            "m",
            row.user_id,
            tuple(sorted((k, tuple(v)) for k, v in row.identifiers.items())),
            row.consent,
        )
    return ("r", row.reason, row.detail)


def test_api_constants() -> None:
    assert FIELDS[0] == "user_id" and FIELDS[-1] == "consent"
    assert FIELDS[1:9] == IDENTIFIER_FIELDS
    assert "line_too_long" in REJECT_REASONS and "no_identifiers" not in REJECT_REASONS


# ---------------------------------------------------------------------------------------------
# CSV


def test_csv_header_rules_values_and_line_numbers(tmp_path: Path) -> None:
    data = (
        "\ufeff User_ID , EMAIL,Phone,extra,consent\r\n"
        "u1,  A@Example.com  ,,x,\r\n"
        "\r\n"
        "   \n"
        ", ,+1 415 555 2671,y,no\n"
        "u3,c@example.com,,z,YES"  # no trailing newline
    )
    rows = read_all(write(tmp_path, "a.csv", data))
    assert rows == [
        Member(1, "u1", {"email": ["A@Example.com"]}, True),
        Member(2, None, {"phone": ["+1 415 555 2671"]}, False),
        Member(3, "u3", {"email": ["c@example.com"]}, True),
    ]


def test_csv_member_without_identifiers_is_yielded(tmp_path: Path) -> None:
    rows = read_all(write(tmp_path, "a.csv", "user_id,email\nu1,\nu2,  \n"))
    assert rows == [Member(1, "u1", {}, True), Member(2, "u2", {}, True)]


def test_csv_quotes_and_bad_quoting(tmp_path: Path) -> None:
    data = (
        "user_id,email,note\n"
        'u1,"a@example.com","hello, world"\n'
        'u2, "b""x@example.com" ,plain\n'  # text after the closing quote
        'u3,"unterminated,x\n'
        'u4,"d@example.com",""\n'
    )
    rows = read_all(write(tmp_path, "a.csv", data))
    assert rows[0] == Member(1, "u1", {"email": ["a@example.com"]}, True)
    assert rejected(rows) == [(2, "bad_csv"), (3, "bad_csv")]
    assert rows[3] == Member(4, "u4", {"email": ["d@example.com"]}, True)


def test_csv_wrong_column_count_detail_has_no_data(tmp_path: Path) -> None:
    data = "user_id,email,phone\nu1,secret@example.com\nu2,b@example.com,,extra\nu3,c@x.io,\n"
    rows = read_all(write(tmp_path, "a.csv", data))
    assert rejected(rows) == [(1, "wrong_column_count"), (2, "wrong_column_count")]
    assert rows[0].detail == "expected 3 columns, got 2"  # type: ignore[union-attr]
    assert all("secret" not in getattr(r, "detail", "") for r in rows)
    assert rows[2] == Member(3, "u3", {"email": ["c@x.io"]}, True)


def test_bad_utf8_and_nul_rows_are_rejected_and_reading_goes_on(tmp_path: Path) -> None:
    data = b"user_id,email\nu1,caf\xe9@example.com\nu2,a\x00b@x.io\nu3,ok@x.io\n"
    rows = read_all(write(tmp_path, "a.csv", data))
    assert rejected(rows) == [(1, "bad_utf8"), (2, "binary_data")]
    assert rows[0].detail == "invalid UTF-8 at byte 6"  # type: ignore[union-attr]
    assert rows[2] == Member(3, "u3", {"email": ["ok@x.io"]}, True)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\n\n  \r\n",
        b"user_id,consent,name\nu1,yes,x\n",  # no identifier column
        b"email,phone,EMAIL\na,b,c\n",  # duplicate column
        b"email\x00,phone\n",
        b"em\xffail,phone\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00",
        b'"email,phone\n',  # unterminated quote in the header
        b",,\n,,\n",
    ],
)
def test_bad_csv_header_is_a_source_error(tmp_path: Path, data: bytes) -> None:
    p = write(tmp_path, "a.csv", data)
    with pytest.raises(SourceError):
        open_source(str(p))


def test_headerless_csv_error_does_not_echo_the_row(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "u1,alice@example.com,+14155552671\n")
    with pytest.raises(SourceError, match="no identifier column") as exc:
        open_source(str(p))
    assert "alice" not in str(exc.value)


def test_sniffed_binary_garbage_is_a_source_error(tmp_path: Path) -> None:
    p = write(tmp_path, "blob", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(SourceError, match="UTF-8"):
        open_source(str(p))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", True),
        ("true", True),
        ("1", True),
        ("Yes", True),
        ("y", True),
        ("T", True),
        (" TRUE ", True),
        ("false", False),
        ("0", False),
        ("NO", False),
        ("n", False),
        ("f", False),
        (" False", False),
        ("maybe", None),
        ("2", None),
    ],
)
def test_csv_consent_values(tmp_path: Path, value: str, expected: bool | None) -> None:
    rows = read_all(write(tmp_path, "a.csv", f"email,consent\na@x.io,{value}\n"))
    if expected is None:
        assert rejected(rows) == [(1, "bad_consent")]
    else:
        assert rows == [Member(1, None, {"email": ["a@x.io"]}, expected)]


def test_csv_without_consent_column_means_consent(tmp_path: Path) -> None:
    rows = read_all(write(tmp_path, "a.csv", "gaid\n38400000-8cf0-11bd-b23e-10b96e40000d\n"))
    assert rows == [Member(1, None, {"gaid": ["38400000-8cf0-11bd-b23e-10b96e40000d"]}, True)]


# ---------------------------------------------------------------------------------------------
# NDJSON and inline lists


def _m(ids: dict[str, list[str]], consent: bool = True, uid: str | None = None) -> Member:
    return Member(1, uid, ids, consent)


def _bad_type(field: str, got: str) -> RejectedRow:
    return RejectedRow(
        1, "bad_value_type", f"{field} must be a string or a list of strings, got {got}"
    )


_BAD_CONSENT = RejectedRow(1, "bad_consent", "consent is not a yes/no value")
_A = {"email": ["a@x.io"]}

NDJSON_CASES: list[tuple[object, Row]] = [
    (
        {"user_id": "u1", "email": ["a@x.io", " ", "b@x.io"], "phone": 14155552671},
        _m({"email": ["a@x.io", "b@x.io"], "phone": ["14155552671"]}, uid="u1"),
    ),
    ({"Email": " A@x.io ", "phone": None, "other": {"x": 1}}, _m({"email": ["A@x.io"]})),
    (
        {"user_id": 42, "idfa_sha256": ["ab" * 32], "consent": False},
        _m({"idfa_sha256": ["ab" * 32]}, False, "42"),
    ),
    ({"email": "a@x.io", "consent": 0}, _m(_A, False)),
    ({"email": "a@x.io", "consent": 1}, _m(_A, True)),
    ({"email": "a@x.io", "consent": "No"}, _m(_A, False)),
    ({"email": "a@x.io", "consent": None}, _m(_A, True)),
    ({"email": "a@x.io", "consent": 2}, _BAD_CONSENT),
    ({"email": "a@x.io", "consent": "maybe"}, _BAD_CONSENT),
    ({"email": "a@x.io", "consent": [True]}, _BAD_CONSENT),
    ({"email": {"v": 1}}, _bad_type("email", "object")),
    ({"email": ["a@x.io", 3]}, _bad_type("email", "number")),
    ({"phone": 4155552671.0}, _bad_type("phone", "number")),
    ({"idfa": True}, _bad_type("idfa", "boolean")),
    (
        {"user_id": ["u1"], "email": "a@x.io"},
        RejectedRow(1, "bad_value_type", "user_id must be a string, got array"),
    ),
    ([{"email": "a@x.io"}], RejectedRow(1, "not_an_object", "expected an object, got array")),
    ("a@x.io", RejectedRow(1, "not_an_object", "expected an object, got string")),
    ({}, _m({})),
]


@pytest.mark.parametrize(("obj", "expected"), NDJSON_CASES)
def test_ndjson_objects(tmp_path: Path, obj: object, expected: Row) -> None:
    p = write(tmp_path, "a.ndjson", json.dumps(obj) + "\n")
    assert read_all(p) == [expected]
    assert list(iter_inline([obj])) == [expected]


def test_ndjson_bad_lines_bom_and_blank_lines(tmp_path: Path) -> None:
    data = (
        b'\xef\xbb\xbf{"email": "a@x.io"}\r\n'
        b"\n"
        b'{"email": "secret@x.io", \n'
        + b"[" * 100_000  # deeper than the JSON parser's recursion limit
        + b"\n"
        + b"123456789" * 1000  # an int too long to convert
        + b"\n"
        + b'{"email": "caf\xe9"}\n'
        + b'{"email": "b@x.io"}'
    )
    rows = read_all(write(tmp_path, "a.jsonl", data))
    assert rows[0] == Member(1, None, {"email": ["a@x.io"]}, True)
    assert rejected(rows) == [(2, "bad_json"), (3, "bad_json"), (4, "bad_json"), (5, "bad_utf8")]
    assert rows[1].detail.endswith("at column 26")  # type: ignore[union-attr]
    assert all("secret" not in getattr(r, "detail", "") for r in rows)
    assert rows[-1] == Member(6, None, {"email": ["b@x.io"]}, True)


def test_empty_ndjson_is_an_empty_audience(tmp_path: Path) -> None:
    assert read_all(write(tmp_path, "a.ndjson", "")) == []
    assert read_all(write(tmp_path, "b.ndjson", "\n \n")) == []


def test_iter_inline_numbers_lines() -> None:
    rows = list(iter_inline([{"email": "a@x.io"}, 5, {"gaid": ["g1", "g2"]}]))
    assert rows == [
        Member(1, None, {"email": ["a@x.io"]}, True),
        RejectedRow(2, "not_an_object", "expected an object, got number"),
        Member(3, None, {"gaid": ["g1", "g2"]}, True),
    ]


# ---------------------------------------------------------------------------------------------
# formats, URIs, gzip


def test_format_from_fmt_name_or_sniffing(tmp_path: Path) -> None:
    csv_text = "email\na@x.io\n"
    json_text = '\n  {"email": "a@x.io"}\n'
    expected = [Member(1, None, {"email": ["a@x.io"]}, True)]
    for name, data, fmt, want in [
        ("a.csv", csv_text, None, "csv"),
        ("a.ndjson", json_text, None, "ndjson"),
        ("a.JSONL", json_text, None, "ndjson"),
        ("a.txt", json_text, None, "ndjson"),
        ("noext", csv_text, None, "csv"),
        ("a.ndjson", csv_text, "CSV", "csv"),  # explicit fmt wins over the name
        ("b.txt", json_text, "jsonl", "ndjson"),
    ]:
        with open_source(str(write(tmp_path, name, data)), fmt) as src:
            assert src.format == want
            assert list(src) == expected


def test_unknown_format_lists_known_ones(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "email\na@x.io\n")
    with pytest.raises(SourceError, match=r"'parquet'.*csv, ndjson"):
        open_source(str(p), "parquet")


def test_empty_file_of_unknown_format_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="empty"):
        open_source(str(write(tmp_path, "snapshot", b"")))


def test_file_uris_and_missing_files(tmp_path: Path) -> None:
    p = write(tmp_path, "my file.csv", "email\na@x.io\n")
    assert members(read_all(p.as_uri())) == [Member(1, None, {"email": ["a@x.io"]}, True)]
    assert len(read_all("file://localhost" + str(p))) == 1
    with pytest.raises(SourceError, match="remote host"):
        open_source("file://otherhost/data.csv")
    with pytest.raises(SourceError, match="cannot open"):
        open_source(str(tmp_path / "missing.csv"))
    with pytest.raises(SourceError, match="cannot open"):
        open_source(str(tmp_path))  # a directory
    with pytest.raises(SourceError, match="scheme"):
        open_source("s3://bucket/key.csv")


CSV_BODY = "user_id,email\n" + "".join(f"u{i},user{i}@example.com\n" for i in range(2000))


def test_gzip_by_name_by_magic_and_multi_member(tmp_path: Path) -> None:
    want = read_all(write(tmp_path, "plain.csv", CSV_BODY))
    assert len(want) == 2000
    assert read_all(write(tmp_path, "a.csv.gz", gzip.compress(CSV_BODY.encode()))) == want
    assert read_all(write(tmp_path, "export.bin", gzip.compress(CSV_BODY.encode()))) == want
    half = len(CSV_BODY) // 2
    multi = gzip.compress(CSV_BODY[:half].encode()) + gzip.compress(CSV_BODY[half:].encode())
    assert read_all(write(tmp_path, "multi.csv.gz", multi + b"\x00" * 16)) == want
    nd = "".join(json.dumps({"email": f"user{i}@example.com"}) + "\n" for i in range(10))
    rows = read_all(write(tmp_path, "a.ndjson.gz", gzip.compress(nd.encode())))
    assert len(members(rows)) == 10


def test_truncated_or_corrupt_gzip_fails_the_snapshot(tmp_path: Path) -> None:
    data = gzip.compress(CSV_BODY.encode())
    for name, cut in [("t.csv.gz", data[: len(data) // 2]), ("t2.csv.gz", data[:-4])]:
        # The header is readable, so open_source succeeds; iterating must fail.
        with (
            open_source(str(write(tmp_path, name, cut))) as src,
            pytest.raises(SourceError, match="truncated"),
        ):
            list(src)
    corrupt = data[:40] + bytes(b ^ 0x55 for b in data[40:80]) + data[80:]
    with (
        pytest.raises(SourceError, match=r"corrupt|truncated"),
        open_source(str(write(tmp_path, "c.csv.gz", corrupt))) as src,
    ):
        list(src)
    with pytest.raises(SourceError, match="not gzip"):
        open_source(str(write(tmp_path, "fake.csv.gz", CSV_BODY)))
    with pytest.raises(SourceError, match="empty"):
        open_source(str(write(tmp_path, "empty.csv.gz", b"")))
    with (
        pytest.raises(SourceError, match=r"trailing|corrupt"),
        open_source(str(write(tmp_path, "junk.csv.gz", data + b"junk"))) as src,
    ):
        list(src)


# ---------------------------------------------------------------------------------------------
# long lines and memory


def test_line_limit_boundaries(tmp_path: Path) -> None:
    limit = 20
    line = "u1," + "a" * (limit - 5) + "@x"  # exactly `limit` bytes
    assert len(line) == limit
    data = f"user_id,email\n{line}\n{line}x\nu3,c@x.io\n"
    rows = read_all(write(tmp_path, "a.csv", data), max_line_bytes=limit)
    assert [type(r).__name__ for r in rows] == ["Member", "RejectedRow", "Member"]
    assert rows[1] == RejectedRow(2, "line_too_long", "line longer than 20 bytes")
    with pytest.raises(SourceError, match="header"):
        open_source(str(write(tmp_path, "h.csv", "email," + "x" * 50 + "\n")), max_line_bytes=limit)


def test_100mb_line_is_skipped_in_constant_memory(tmp_path: Path) -> None:
    p = tmp_path / "huge.csv"
    block = b"x" * (1 << 20)
    with open(p, "wb") as f:
        f.write(b"user_id,email\nu1,a@x.io\nu2,")
        for _ in range(100):
            f.write(block)
        f.write(b"\nu3,c@x.io\n")
    tracemalloc.start()
    try:
        rows = read_all(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == [
        Member(1, "u1", {"email": ["a@x.io"]}, True),
        RejectedRow(2, "line_too_long", f"line longer than {1 << 20} bytes"),
        Member(3, "u3", {"email": ["c@x.io"]}, True),
    ]
    print(f"peak {peak / 2**20:.1f} MiB")
    assert peak < 20 * (1 << 20), peak


def test_gzip_bomb_line_is_decompressed_in_bounded_steps(tmp_path: Path) -> None:
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    p = tmp_path / "bomb.ndjson.gz"
    with open(p, "wb") as f:
        f.write(comp.compress(b'{"email": "a@x.io"}\n{"email": "'))
        block = b"y" * (1 << 20)
        for _ in range(100):
            f.write(comp.compress(block))
        f.write(comp.compress(b'"}\n{"email": "b@x.io"}\n'))
        f.write(comp.flush())
    assert p.stat().st_size < 5 << 20  # ~100 MB once decompressed
    tracemalloc.start()
    try:
        rows = read_all(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [type(r).__name__ for r in rows] == ["Member", "RejectedRow", "Member"]
    assert rows[1].reason == "line_too_long"  # type: ignore[union-attr]
    print(f"peak {peak / 2**20:.1f} MiB")
    assert peak < 20 * (1 << 20), peak


@settings(max_examples=80, deadline=None)
@given(
    data=st.lists(
        st.one_of(st.binary(max_size=12), st.sampled_from([b"", b"\r", b"x" * 30])), max_size=12
    ),
    chunk=st.integers(1, 9),
    limit=st.integers(1, 16),
)
def test_line_splitter_matches_reference(data: list[bytes], chunk: int, limit: int) -> None:
    raw = b"\n".join(d.replace(b"\n", b"") for d in data)
    chunks = [raw[k : k + chunk] for k in range(0, len(raw), chunk)]
    with mock.patch.object(sources, "CHUNK_SIZE", chunk):
        got = [ln for batch in sources._line_batches(iter(chunks), limit) for ln in batch]
    want = raw.split(b"\n")
    if want and want[-1] == b"":
        want.pop()
    norm = [None if ln is None or len(ln) > limit else ln for ln in got]
    assert norm == [None if len(ln) > limit else ln for ln in want]


# ---------------------------------------------------------------------------------------------
# HTTP


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: dict[str, bytes] = {}

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/short":  # promises 1000 bytes, sends 100, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"email\n" + b"a@x.io\n" * 13)
            self.wfile.flush()
            self.close_connection = True
            return
        if path == "/chunked-cut.csv":  # a chunked body that stops mid-stream
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            body = b"email\n" + b"a@x.io\n" * 100
            self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
            self.wfile.write(b"400\r\nb@x.io\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if path == "/encoded.csv":  # transport compression of a .csv
            body = gzip.compress(CSV_BODY.encode())
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = self.files.get(path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    _Handler.files = {
        "/a.csv": CSV_BODY.encode(),
        "/a.csv.gz": gzip.compress(CSV_BODY.encode()),
        "/export": b'{"email": "a@x.io"}\n',
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_sources(http_base: str, tmp_path: Path) -> None:
    want = read_all(write(tmp_path, "a.csv", CSV_BODY))
    assert read_all(f"{http_base}/a.csv?sig=abc") == want
    assert read_all(f"{http_base}/a.csv.gz") == want
    assert read_all(f"{http_base}/encoded.csv") == want
    assert read_all(f"{http_base}/export") == [Member(1, None, {"email": ["a@x.io"]}, True)]


def test_http_errors_are_source_errors_without_secrets(http_base: str) -> None:
    with pytest.raises(SourceError, match="HTTP 404") as exc:
        open_source(f"{http_base}/missing.csv?token=s3cr3t")
    assert "s3cr3t" not in str(exc.value)
    with (
        pytest.raises(SourceError, match="connection lost"),
        open_source(f"{http_base}/short", "csv") as src,
    ):
        list(src)
    with (
        pytest.raises(SourceError, match="connection lost"),
        open_source(f"{http_base}/chunked-cut.csv") as src,
    ):
        list(src)
    with pytest.raises(SourceError, match="byte_range"):
        open_source(f"{http_base}/a.csv", byte_range=(0, 10))
    assert split_ranges(f"{http_base}/a.csv", 4) is None


def test_unreachable_http_port_is_a_source_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match="cannot fetch") as exc:
        open_source(f"http://user:pw@127.0.0.1:{port}/a.csv", http_timeout=2)
    assert "pw" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# byte ranges


def test_split_ranges_rules(tmp_path: Path) -> None:
    big = write(tmp_path, "big.csv", "email\n" + ("a" * 60 + "@x.io\n") * 20_000)
    size = big.stat().st_size
    ranges = split_ranges(str(big), 4)
    assert ranges is not None and len(ranges) == 4
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(a[1] == b[0] for a, b in pairwise(ranges))
    assert split_ranges(big.as_uri(), 1) == [(0, size)]
    assert split_ranges(str(write(tmp_path, "small.csv", "email\na@x.io\n")), 4) is None
    assert (
        split_ranges(str(write(tmp_path, "big.csv.gz", gzip.compress(big.read_bytes()))), 4) is None
    )
    assert split_ranges(str(write(tmp_path, "big.bin", b"\x1f\x8b" + big.read_bytes())), 4) is None
    assert split_ranges(str(tmp_path / "missing.csv"), 4) is None
    with pytest.raises(ValueError):
        split_ranges(str(big), 0)
    parts = [read_all(big, byte_range=r) for r in ranges]
    assert sum(len(p) for p in parts) == 20_000
    assert parts[1][0].line == 1  # part-relative numbering


def test_byte_range_only_for_plain_local_files(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv.gz", gzip.compress(CSV_BODY.encode()))
    with pytest.raises(SourceError, match="byte_range"):
        open_source(str(p), byte_range=(0, 10))
    with pytest.raises(ValueError):
        open_source(str(write(tmp_path, "a.csv", CSV_BODY)), byte_range=(10, 5))


_LINES = st.one_of(
    st.builds(
        lambda i, e, c: f"u{i},{e},{c}",
        st.integers(0, 99),
        st.sampled_from(["a@x.io", "", " b@x.io ", '"q,x@y.io"', 'bad"q']),
        st.sampled_from(["", "yes", "0", "maybe"]),
    ),
    st.sampled_from(
        ["", "   ", "u1,only-two", "\r", "x" * 80, "u\xe9,caf\udce9@x.io,", "u2,\x00,"]
    ),
)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(_LINES, max_size=30),
    ndjson=st.booleans(),
    crlf=st.booleans(),
    parts=st.integers(1, 12),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_byte_range_parts_union_equals_whole_file(
    tmp_path: Path, lines: list[str], ndjson: bool, crlf: bool, parts: int, cuts: list[int]
) -> None:
    eol = "\r\n" if crlf else "\n"
    if ndjson:
        body = "".join(
            json.dumps({"user_id": ln[:8], "email": ln[8:]}) + eol if len(ln) % 3 else ln + eol
            for ln in lines
        )
    else:
        body = "user_id,email,consent" + eol + eol.join(lines)
    p = write(
        tmp_path, "parts.ndjson" if ndjson else "parts.csv", body.encode("utf-8", "surrogateescape")
    )
    size = p.stat().st_size
    whole = Counter(key(r) for r in read_all(p, max_line_bytes=64))
    # Random part count through split_ranges, and arbitrary cut points directly.
    with mock.patch.object(sources, "MIN_SPLIT_BYTES", 0):
        ranges = split_ranges(str(p), parts)
    assert ranges is not None
    points = sorted({0, size, *(c % (size + 1) for c in cuts)})
    for rs in (ranges, list(pairwise(points))):
        union: Counter = Counter()
        for r in rs:
            union.update(key(x) for x in read_all(p, max_line_bytes=64, byte_range=r))
        assert union == whole


# ---------------------------------------------------------------------------------------------
# robustness


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.sampled_from(
                [
                    b"email",
                    b",",
                    b"\n",
                    b'"',
                    b"{",
                    b"}",
                    b"\x00",
                    b"\xff",
                    b"\xef\xbb\xbf",
                    b"consent",
                    b'"email":',
                    b"[",
                    b"1",
                    b" ",
                    b"\r",
                ]
            ),
            max_size=40,
        ).map(b"".join),
    ),
    fmt=st.sampled_from([None, "csv", "ndjson"]),
    gz=st.booleans(),
    limit=st.sampled_from([8, 1 << 20]),
)
def test_fuzz_only_rows_or_source_error(
    tmp_path: Path, data: bytes, fmt: str | None, gz: bool, limit: int
) -> None:
    if gz:
        data = gzip.compress(data)[: len(data) // 2 + 10 if len(data) % 2 else None]
    p = write(tmp_path, "fuzz.bin", data)
    try:
        with open_source(str(p), fmt, max_line_bytes=limit) as src:
            for row in src:
                assert isinstance(row, Member | RejectedRow)
                if isinstance(row, RejectedRow):
                    assert row.reason in REJECT_REASONS
    except SourceError:
        pass


def test_close_mid_iteration_releases_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", CSV_BODY)
    src = open_source(str(p))
    first = next(src)
    assert isinstance(first, Member)
    src.close()
    assert list(src) == []
    assert src._closers == []


# ---------------------------------------------------------------------------------------------
# scripts.gen_members


def _gen(tmp_path: Path, name: str, **kw: object) -> tuple[bytes, dict[str, int]]:
    p = tmp_path / name
    counts = gen_members.generate(p, **kw)  # type: ignore[arg-type]
    return p.read_bytes(), counts


def test_gen_members_is_deterministic(tmp_path: Path) -> None:
    for fmt, gz in [("csv", False), ("ndjson", False), ("csv", True)]:
        a, ca = _gen(tmp_path, "a", count=3000, fmt=fmt, gzip=gz)
        b, cb = _gen(tmp_path, "b", count=3000, fmt=fmt, gzip=gz)
        assert a == b and ca == cb
    c, _ = _gen(tmp_path, "c", count=3000, seed=2)
    d, _ = _gen(tmp_path, "d", count=3000)
    assert c != d


def test_gen_members_member_is_a_function_of_seed_and_index(tmp_path: Path) -> None:
    full, _ = _gen(tmp_path, "full.csv", count=12_000)
    tail, counts = _gen(tmp_path, "tail.csv", count=4_655, start=7_345)  # crosses a block
    assert counts["rows"] == 4_655
    assert full.split(b"\n")[1 + 7_345 :] == tail.split(b"\n")[1:]
    par, _ = _gen(tmp_path, "par.csv", count=12_000, workers=2)
    assert par == full


def test_gen_members_rows_parse_and_phones_validate(tmp_path: Path) -> None:
    for fmt in ("csv", "ndjson"):
        p = tmp_path / f"m.{fmt}"
        counts = gen_members.generate(p, 6000, fmt=fmt, invalid_share=0.2)
        rows = read_all(p)
        assert counts["rows"] == len(rows) == 6000
        reasons = Counter(r.reason for r in rows if isinstance(r, RejectedRow))
        assert reasons == {
            ("wrong_column_count" if fmt == "csv" else "bad_json"): counts["malformed"]
        }
        assert counts["malformed"] > 0
        ms = members(rows)
        assert len(ms) == counts["members"]
        assert sum(not m.consent for m in ms) == counts["consent_false"]
        status = {
            m.user_id: gen_members.member_status(int(m.user_id[1:]), invalid_share=0.2) for m in ms
        }  # type: ignore[index]
        assert Counter(status.values())["invalid"] == counts["invalid"]
        # every kind of deliberately bad identifier shows up
        values = [(k, v) for m in ms for k, vs in m.identifiers.items() for v in vs]
        assert any(k == "email" and "@" not in v for k, v in values)
        assert any(k == "phone" and len(v) == 5 for k, v in values)
        assert any(k == "idfa" and v == "00000000-0000-0000-0000-000000000000" for k, v in values)
        assert any(k.endswith("_sha256") and len(v) == 63 for k, v in values)
        assert {k for k, _ in values} == set(IDENTIFIER_FIELDS)
        phones = [
            v for m in ms if status[m.user_id] == "ok" for v in m.identifiers.get("phone", [])
        ]
        valid = 0
        for v in phones:
            with suppress(phonenumbers.NumberParseException):
                valid += phonenumbers.is_valid_number(phonenumbers.parse(v, "US"))
        assert len(phones) > 3000 and valid / len(phones) >= 0.95


def test_gen_members_changed_snapshot(tmp_path: Path) -> None:
    base = {m.user_id: m for m in members(read_all(_gen_path(tmp_path, "base.csv", count=10_000)))}
    p = tmp_path / "changed.csv"
    counts = gen_members.generate(p, 12_000, drop_share=0.1, withdraw_share=0.05)
    changed = {m.user_id: m for m in members(read_all(p))}
    dropped = {u for u in base if u not in changed}
    added = {u for u in changed if u not in base}
    assert 0.08 < len(dropped) / len(base) < 0.12
    assert counts["dropped"] == 12_000 - counts["rows"]
    assert all(int(u[1:]) >= 10_000 for u in added)  # type: ignore[index]
    assert 1500 < len(added) < 2000
    withdrawn = 0
    for u, m in changed.items():
        if u in base:
            b = base[u]
            assert m.identifiers == b.identifiers
            if b.consent and not m.consent:
                withdrawn += 1
            else:
                assert m.consent == b.consent
    assert 0.03 < withdrawn / len(changed) < 0.07
    assert counts["withdrawn"] >= withdrawn


def _gen_path(tmp_path: Path, name: str, **kw: object) -> Path:
    p = tmp_path / name
    gen_members.generate(p, **kw)  # type: ignore[arg-type]
    return p


def test_gen_members_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "m.ndjson.gz"
    assert gen_members.main([str(out), "--count", "500", "--format", "ndjson", "--gzip"]) == 0
    summary = json.loads(capsys.readouterr().err)
    assert summary["rows"] == 500 and summary["rows_per_s"] > 0
    assert len(read_all(out)) == 500
