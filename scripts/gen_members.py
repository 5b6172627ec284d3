"""Generate synthetic member snapshots (CSV / NDJSON, optionally gzip) for demos, tests and
benchmarks: streamed, deterministic (member i is a pure function of (seed, i)), and fast.

    python -m scripts.gen_members OUT --count N [--start 0] [--seed 1] [--format csv|ndjson]
        [--gzip] [--invalid-share 0.05] [--drop-share 0.0] [--withdraw-share 0.0] [--drop-seed 2]
        [--workers N]

A "changed snapshot" of the same audience: same --seed, a larger --count (members appended),
--drop-share (member i is left out when a hash of (drop_seed, i) falls under the share) and
--withdraw-share (consent false for another hashed share of (drop_seed, i)). Nothing else about a
member changes, so two snapshots differ by exactly the appended, dropped and withdrawn members.

Rows look like real CDP exports: mixed-case emails, sometimes padded or +tagged; phones in
E.164, "+1 (415) 2xx-xxxx", US national and "00"-prefixed international forms (valid US / GB / DE
numbers per the phonenumbers metadata); an IDFA (uppercase) or a GAID (lowercase) on most rows;
sometimes pre-hashed columns instead of raw ones; consent mostly true, in varied spellings.
``invalid_share`` of the members carry one deliberately bad identifier (email without "@",
too-short phone, all-zero IDFA, 63-char hash); 1/50 of that share are malformed lines (wrong CSV
column count / broken JSON) so that rejections are exercised.

Speed: CPython spends ~50 ns per bytecode here, so rows are built column-wise a block at a time:
the random choices for a block of 10,000 members come from one SHAKE-128 digest of
(seed, block), are mapped to strings with ``bytes.translate`` and table look-ups inside ``map``,
and only the rare special rows get a Python loop. Blocks are independent, so ``workers``
processes render them in parallel while the parent writes them in order.
"""

from __future__ import annotations

import argparse
import gzip as gzip_module
import hashlib
import json
import os
import resource
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import lru_cache
from itertools import compress, repeat
from pathlib import Path
from typing import BinaryIO

CSV_HEADER = (
    "user_id,email,phone,idfa,gaid,email_sha256,phone_sha256,idfa_sha256,gaid_sha256,consent\n"
)
BLOCK = 10_000  # members per random block; fixed: it is part of the (seed, i) -> member mapping
COUNT_KEYS = ("rows", "members", "invalid", "malformed", "dropped", "withdrawn", "consent_false")

# Random planes of a block digest: name -> (offset, bytes per member).
_PLANES: dict[str, tuple[int, int]] = {}
_width = 0
for _name, _w in (
    ("inv", 2),  # invalid / malformed decision (16-bit)
    ("badkind", 1),  # which identifier is made bad
    ("email", 1),  # none / pre-hashed / raw
    ("name", 2),  # first (high byte) and last (low byte) name spelling
    ("domain", 1),
    ("pad", 1),  # leading spaces
    ("misc", 1),  # +tag / quoted CSV email / NDJSON email list
    ("phone", 1),  # none / pre-hashed / raw
    ("country", 1),
    ("pfmt", 1),  # phone spelling
    ("device", 1),  # IDFA / GAID / pre-hashed / none
    ("consent", 1),
    ("uuid", 16),
):
    _PLANES[_name] = (_width * BLOCK, _w)
    _width += _w
_BLOCK_BYTES = _width * BLOCK
_DROP_PLANES = {"drop": (0, 2), "withdraw": (2 * BLOCK, 2)}

_FIRST = [
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William",
    "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
    "Charles", "Karen", "Christopher", "Lisa", "Daniel", "Nancy", "Matthew", "Betty", "Anthony",
    "Margaret", "Mark", "Sandra", "Donald", "Ashley", "Steven", "Kimberly", "Paul", "Emily",
    "Andrew", "Donna", "Joshua", "Michelle", "Kenneth", "Carol", "Kevin", "Amanda", "Brian",
    "Dorothy", "George", "Melissa", "Timothy", "Deborah", "Ronald", "Stephanie", "Edward",
    "Rebecca", "Jason", "Sharon", "Jeffrey", "Laura", "Ryan", "Cynthia", "Jacob", "Kathleen",
    "Gary", "Amy",
]  # fmt: skip
_LAST = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Muller", "Schmidt", "Schneider",
    "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann", "Koch", "Richter",
    "Klein", "Wolf",
]  # fmt: skip
# 256 spellings each (64 names x 4 case styles), indexed by one random byte.
_FIRST256 = [(n, n.lower(), n.upper(), n)[b >> 6] for b in range(256) for n in [_FIRST[b & 63]]]
_LAST256 = [
    (f".{n}", f".{n.lower()}", f"_{n.lower()}", n)[b >> 6]
    for b in range(256)
    for n in [_LAST[b & 63]]
]
_DOMAINS = (
    "Example.com", "example.com", "example.com", "EXAMPLE.COM", "example.org", "Example.net",
    "mail.example.com", "example.co.uk", "example.de", "Example.org", "example.net",
    "example.com", "shop.example", "example.io", "Example.com", "example.com",
)  # fmt: skip
# "@domain", with trailing spaces on ~3% (exports are not always trimmed).
_ATDOM256 = [
    f"@{_DOMAINS[b & 15]}{' ' if b >= 252 else '  ' if b >= 248 else ''}" for b in range(256)
]
_TAGS = ("+news", "+promo", "+cdp", "+1")

# Area codes / exchanges that phonenumbers' metadata accepts as valid US numbers (checked in the
# tests); 555 and N11 exchanges are avoided as reserved or fictional in places.
_US_AREAS = (
    212, 213, 214, 215, 216, 303, 305, 310, 312, 313, 404, 407, 408, 410, 412, 415, 503, 504,
    512, 602, 612, 617, 646, 702, 713, 718, 720, 773, 801, 813, 818, 916, 919, 206, 202, 201,
)  # fmt: skip
_US_EXCH = tuple(e for e in range(200, 1000) if e != 555 and e % 100 != 11)
_DE_PREFIXES = ("151", "152", "157", "160", "170", "171", "176", "175")
_LN4 = [f"{n:04d}" for n in range(10_000)]
# US spellings by pfmt byte & 15; number 14 is written as a JSON number in NDJSON.
_US_FORMATS = (
    "+1{a}{e}", "+1{a}{e}", "+1{a}{e}", "+1{a}{e}", "+1{a}{e}",
    "+1 ({a}) {e}-", "+1 ({a}) {e}-", "+1 ({a}) {e}-",
    "({a}) {e}-", "({a}) {e}-", "({a}) {e}-",
    "{a}-{e}-", "{a}-{e}-", "{a}{e}", "1{a}{e}", "+1 {a} {e} ",
)  # fmt: skip
_US_NUMERIC_FMT = 14

# Consent byte: < 4 opted out (~1.6%), spelled in varied ways.
_CONSENT_CSV256 = [
    ("false", "0", "no", "FALSE")[b] if b < 4 else ("true", "1", "yes", "", "TRUE", "Y", "")[b % 7]
    for b in range(256)
]
_TAIL256 = [",,,," + c for c in _CONSENT_CSV256]  # the 4 empty *_sha256 columns + consent
_CONSENT_JSON256 = [
    (',"consent":false', ',"consent":0', ',"consent":"no"', ',"consent":"N"')[b]
    if b < 4
    else (',"consent":true', "", ',"consent":"yes"', ',"consent":1', "", ',"consent":true')[b % 6]
    for b in range(256)
]
_ZERO_IDFA = "00000000-0000-0000-0000-000000000000"
_UUID_POS = [p for p in range(36) if p not in (8, 13, 18, 23)]


def _table(pred: Callable[[int], bool]) -> bytes:
    """256-byte translate table: 1 where pred(byte) else 0."""
    return bytes(1 if pred(b) else 0 for b in range(256))


_T_NO_EMAIL = _table(lambda b: b < 8)  # ~3% no email
_T_EMAIL_SHA = _table(lambda b: 8 <= b < 20)  # ~5% pre-hashed (a third in uppercase hex)
_T_PAD = _table(lambda b: b < 8)  # ~3% leading spaces
_T_TAG = _table(lambda b: b < 10)  # ~4% +tag
_T_QUOTE = _table(lambda b: 16 <= b < 20)  # ~1.6% quoted (CSV)
_T_LIST = _table(lambda b: b >= 248)  # ~3% two emails (NDJSON)
_T_NO_PHONE = _table(lambda b: b < 38)  # ~15% no phone
_T_PHONE_SHA = _table(lambda b: 38 <= b < 46)  # ~3% pre-hashed
_T_NOT_US = _table(lambda b: b >= 230)  # ~10% GB / DE
_T_US_NUMERIC = _table(lambda b: (b & 15) == _US_NUMERIC_FMT)
_T_IDFA = _table(lambda b: b < 90)  # ~35%
_T_DEV_SHA = _table(lambda b: 90 <= b < 94)  # ~1.6% pre-hashed IDFA / GAID
_T_GAID = _table(lambda b: 94 <= b < 182)  # ~34%
_T_DEV3 = bytes(1 if b < 90 else 2 if 94 <= b < 182 else 0 for b in range(256))
_T_CONSENT_FALSE = _table(lambda b: b < 4)
_T_LOW4 = bytes(b & 15 for b in range(256))


@lru_cache(maxsize=1)
def _names() -> list[str]:
    """65,536 "First.Last" spellings indexed by a 16-bit value (built once, ~20 ms)."""
    return [f + last for f in _FIRST256 for last in _LAST256]


def _where(flags: bytes) -> list[int]:
    """Indices of the 1 bytes in a 0/1 bytes object (C-speed find: for rare flags)."""
    out: list[int] = []
    j = flags.find(1)
    while j >= 0:
        out.append(j)
        j = flags.find(1, j + 1)
    return out


def _u16(plane: bytes) -> array:
    a = array("H")
    a.frombytes(plane)
    if sys.byteorder == "big":  # the digest is read as little-endian everywhere
        a.byteswap()
    return a


@lru_cache(maxsize=4)
def _block_digest(seed: int, blk: int) -> bytes:
    return hashlib.shake_128(f"gen_members:{seed}:{blk}".encode()).digest(_BLOCK_BYTES)


def _drop_digest(drop_seed: int, blk: int) -> bytes:
    return hashlib.shake_128(f"gen_members.drop:{drop_seed}:{blk}".encode()).digest(4 * BLOCK)


def _plane(digest: bytes, planes: dict[str, tuple[int, int]], name: str, off: int, n: int) -> bytes:
    base, w = planes[name]
    return digest[base + off * w : base + (off + n) * w]


def _share16(share: float) -> int:
    return round(max(0.0, min(1.0, share)) * 65536)


def _thresholds(invalid_share: float) -> tuple[int, int]:
    inv = _share16(invalid_share)
    return inv, inv // 50


def member_status(i: int, seed: int = 1, invalid_share: float = 0.05) -> str:
    """ "ok", "invalid" (one bad identifier) or "malformed" (broken line) for member i."""
    blk, off = divmod(i, BLOCK)
    v = _u16(_plane(_block_digest(seed, blk), _PLANES, "inv", off, 1))[0]
    inv_thr, mal_thr = _thresholds(invalid_share)
    return "malformed" if v < mal_thr else "invalid" if v < inv_thr else "ok"


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _uuids(raw: bytes, n: int) -> tuple[list[str], list[str]]:
    """(lowercase, uppercase) canonical UUIDs from 16 random bytes each.

    Strided bytearray slice assignments lay the hex digits out as "8-4-4-4-12\n" records in
    ~37 C-level passes for the whole block instead of formatting each UUID in Python.
    """
    hexb = raw.hex().encode("ascii")
    out = bytearray(b"-" * (37 * n))
    for q, p in enumerate(_UUID_POS):
        out[p::37] = hexb[q::32]
    out[36::37] = b"\n" * n
    text = out[:-1].decode("ascii")
    return text.split("\n"), text.upper().split("\n")


def _pick(default: str, values: list[str], flags: Iterable[int]) -> list[str]:
    """values[j] where flags[j] else default, in C (tuple indexing inside map)."""
    return list(map(tuple.__getitem__, zip(repeat(default), values), flags))


def _render_block(
    blk: int,
    off: int,
    n: int,
    seed: int,
    as_csv: bool,
    invalid_share: float,
    drop_share: float,
    withdraw_share: float,
    drop_seed: int,
) -> tuple[bytes, list[int]]:
    """Render members blk*BLOCK+off .. +n-1; returns (encoded text, counts in COUNT_KEYS order).

    Common values are built for the whole block with C-level map/zip/join; the rare variants
    (no email, pre-hashed, GB/DE phone, invalid, ...) are fixed up by index afterwards.
    """
    if n <= 0:
        return b"", [0] * len(COUNT_KEYS)
    d = _block_digest(seed, blk)

    def plane(name: str) -> bytes:
        return _plane(d, _PLANES, name, off, n)

    lo = blk * BLOCK + off
    nums = list(map(str, range(lo, lo + n)))

    # Rows with a deliberately bad identifier or a broken line.
    inv_thr, mal_thr = _thresholds(invalid_share)
    inv16 = _u16(plane("inv"))
    hi_thr = (inv_thr - 1) >> 8  # candidates by the high byte (C), exact check after
    cand = _where(plane("inv")[1::2].translate(_table(lambda b: b <= hi_thr))) if inv_thr else []
    malformed = [j for j in cand if inv16[j] < mal_thr]
    invalid = [j for j in cand if mal_thr <= inv16[j] < inv_thr]

    # email
    names = _names()
    emails = list(
        map(
            "".join,
            zip(
                map(names.__getitem__, _u16(plane("name"))),
                nums,
                map(_ATDOM256.__getitem__, plane("domain")),
                strict=True,
            ),
        )
    )
    misc = plane("misc")
    for j in _where(misc.translate(_T_TAG)):
        e = emails[j]
        at = e.index("@")
        emails[j] = e[:at] + _TAGS[misc[j] & 3] + e[at:]
    pad = plane("pad")
    for j in _where(pad.translate(_T_PAD)):
        emails[j] = (" " if pad[j] < 5 else "  ") + emails[j]
    email_sel = plane("email")
    esha: dict[int, str] = {}
    for j in _where(email_sel.translate(_T_EMAIL_SHA)):
        h = _sha(emails[j].strip().lower())
        esha[j] = h.upper() if email_sel[j] < 12 else h
        emails[j] = ""
    for j in _where(email_sel.translate(_T_NO_EMAIL)):
        emails[j] = ""

    # phone: US numbers derived from the member index (unique in a 140M-number space)
    area = _US_AREAS[(blk // len(_US_EXCH)) % len(_US_AREAS)]  # BLOCK == 10,000 line numbers
    exch = _US_EXCH[blk % len(_US_EXCH)]
    prefixes = [f.format(a=area, e=exch) for f in _US_FORMATS]
    pfmt = plane("pfmt")
    phones = list(
        map(str.__add__, map(prefixes.__getitem__, pfmt.translate(_T_LOW4)), _LN4[off : off + n])
    )
    numeric = set(_where(pfmt.translate(_T_US_NUMERIC)))  # NDJSON: phone as a JSON number
    e164_other: dict[int, str] = {}
    country = plane("country")
    for j in _where(country.translate(_T_NOT_US)):
        i = lo + j
        numeric.discard(j)
        sub = f"{i % 100_000_000:08d}"
        if country[j] < 243:  # GB mobile 7[1-3]xxxxxxxx
            nat = f"7{1 + (i // 100_000_000) % 3}{sub}"
            cc, spaced = "44", f"{nat[:4]} {nat[4:]}"
        else:  # DE mobile 15x/16x/17x + 8 digits
            nat = _DE_PREFIXES[(i // 100_000_000) % 8] + sub
            cc, spaced = "49", f"{nat[:3]} {nat[3:]}"
        e164_other[j] = f"+{cc}{nat}"
        style = pfmt[j] & 15
        phones[j] = (
            f"+{cc}{nat}" if style < 8 else f"+{cc} {spaced}" if style < 15 else f"00{cc} {spaced}"
        )
    phone_sel = plane("phone")
    psha: dict[int, str] = {}
    us_e164 = f"+1{area}{exch}"
    for j in _where(phone_sel.translate(_T_PHONE_SHA)):
        psha[j] = _sha(e164_other.get(j) or us_e164 + _LN4[off + j])
        phones[j] = ""
    for j in _where(phone_sel.translate(_T_NO_PHONE)):
        phones[j] = ""

    # device ids: IDFA (uppercase) or GAID (lowercase) or a pre-hashed one or none
    dev = plane("device")
    lower, upper = _uuids(plane("uuid"), n)
    isha: dict[int, str] = {}
    gsha: dict[int, str] = {}
    for j in _where(dev.translate(_T_DEV_SHA)):
        (isha if dev[j] < 92 else gsha)[j] = _sha(lower[j])

    # the deliberately bad identifiers (one per invalid member)
    badkind = plane("badkind")
    zero_idfa: list[int] = []
    for j in invalid:
        kind = badkind[j] & 3
        if kind == 0:  # email without "@"
            emails[j] = (emails[j] or f"user{lo + j}@example.com").replace("@", ".")
            esha.pop(j, None)
        elif kind == 1:  # 5 digits: too short anywhere
            phones[j] = str(10_000 + (lo + j) % 90_000)
            psha.pop(j, None)
        elif kind == 2:  # all-zero IDFA (limit ad tracking)
            zero_idfa.append(j)
            isha.pop(j, None)
            gsha.pop(j, None)
        else:  # 63-char hash
            esha[j] = _sha(f"u{lo + j}")[:63]
    sha_rows = sorted(esha.keys() | psha.keys() | isha.keys() | gsha.keys())

    # drops and withdrawals (the "changed snapshot" options)
    keep: bytes | None = None
    withdrawn: list[int] = []
    if drop_share > 0 or withdraw_share > 0:
        dd = _drop_digest(drop_seed, blk)
        dthr, wthr = _share16(drop_share), _share16(withdraw_share)
        if dthr:
            keep = bytes(v >= dthr for v in _u16(_plane(dd, _DROP_PLANES, "drop", off, n)))
        if wthr:
            wd16 = _u16(_plane(dd, _DROP_PLANES, "withdraw", off, n))
            withdrawn = [j for j, v in enumerate(wd16) if v < wthr and (keep is None or keep[j])]
    wset = set(withdrawn)

    consent_plane = plane("consent")
    if as_csv:
        idfas = _pick("", upper, dev.translate(_T_IDFA))
        gaids = _pick("", lower, dev.translate(_T_GAID))
        for j in zero_idfa:
            idfas[j], gaids[j] = _ZERO_IDFA, ""
        for j in _where(misc.translate(_T_QUOTE)):
            if emails[j]:
                emails[j] = f'"{emails[j]}"'  # exercises the quoted-field path
        tails = list(map(_TAIL256.__getitem__, consent_plane))
        for j in withdrawn:
            tails[j] = ",,,,false"
        for j in sha_rows:
            c = "false" if j in wset else _CONSENT_CSV256[consent_plane[j]]
            tails[j] = ",".join(
                (esha.get(j, ""), psha.get(j, ""), isha.get(j, ""), gsha.get(j, ""), c)
            )
        rows = list(map(",".join, zip(nums, emails, phones, idfas, gaids, tails, strict=True)))
        for j in malformed:
            rows[j] = f"{lo + j},broken-row"
        prefix, sep, suffix = "u", "\nu", "\n"  # "u" of the user id rides on the separator
    else:
        email_parts = list(map(',"email":"{}"'.format, emails))
        for j in _where(misc.translate(_T_LIST)):
            email_parts[j] = f',"email":["{emails[j]}","u{lo + j}@work.example"]'
        for j in _where(email_sel.translate(_T_NO_EMAIL)) + list(esha):
            if not emails[j]:
                email_parts[j] = ""
        phone_parts = list(map(',"phone":"{}"'.format, phones))
        for j in numeric:
            if phones[j].isdigit():
                phone_parts[j] = f',"phone":{phones[j]}'
        for j in _where(phone_sel.translate(_T_NO_PHONE)) + list(psha):
            if not phones[j]:
                phone_parts[j] = ""
        dev_parts = list(
            map(
                tuple.__getitem__,
                zip(
                    repeat(""),
                    map(',"idfa":"{}"'.format, upper),
                    map(',"gaid":"{}"'.format, lower),
                ),
                dev.translate(_T_DEV3),
            )
        )
        for j in zero_idfa:
            dev_parts[j] = f',"idfa":"{_ZERO_IDFA}"'
        for j in sha_rows:
            for key, col in (
                ("email_sha256", esha),
                ("phone_sha256", psha),
                ("idfa_sha256", isha),
                ("gaid_sha256", gsha),
            ):
                if j in col:
                    dev_parts[j] += f',"{key}":"{col[j]}"'
        consents = list(map(_CONSENT_JSON256.__getitem__, consent_plane))
        for j in withdrawn:
            consents[j] = ',"consent":false'
        rows = list(
            map("".join, zip(nums, repeat('"'), email_parts, phone_parts, dev_parts, consents))
        )
        for j in malformed:  # the closing brace after a trailing comma: not JSON
            rows[j] = f'{lo + j}","email":"broken{lo + j}@example.com",'
        prefix, sep, suffix = '{"user_id":"u', '}\n{"user_id":"u', "}\n"

    # counts of what is written (dropped members count only as dropped)
    bad = set(malformed)
    false_rows = {j for j in _where(consent_plane.translate(_T_CONSENT_FALSE)) if j not in bad}
    false_rows.update(j for j in withdrawn if j not in bad)
    if keep is not None:
        rows = list(compress(rows, keep))
        kept = len(rows)
        n_malformed = sum(1 for j in malformed if keep[j])
        n_invalid = sum(1 for j in invalid if keep[j])
        n_false = sum(1 for j in false_rows if keep[j])
    else:
        kept, n_malformed, n_invalid, n_false = n, len(malformed), len(invalid), len(false_rows)
    n_withdrawn = sum(1 for j in withdrawn if j not in bad)
    counts = [kept, kept - n_malformed, n_invalid, n_malformed, n - kept, n_withdrawn, n_false]
    text = prefix + sep.join(rows) + suffix if rows else ""
    return text.encode("ascii"), counts


def _blocks(start: int, count: int) -> Iterator[tuple[int, int, int]]:
    """(block, offset, n) pieces covering members start..start+count-1."""
    i, end = start, start + count
    while i < end:
        blk, off = divmod(i, BLOCK)
        n = min(BLOCK - off, end - i)
        yield blk, off, n
        i += n


def generate(
    path: str | Path,
    count: int,
    start: int = 0,
    seed: int = 1,
    fmt: str = "csv",
    gzip: bool = False,
    invalid_share: float = 0.05,
    drop_share: float = 0.0,
    withdraw_share: float = 0.0,
    drop_seed: int = 2,
    *,
    workers: int | None = None,
) -> dict[str, int]:
    """Write members start..start+count-1 to ``path``; return counts of what was written.

    ``workers``: render processes (default: CPU count, 1 for small outputs); the bytes written
    do not depend on it.
    """
    if fmt not in ("csv", "ndjson"):
        raise ValueError(f"unknown format {fmt!r} (csv or ndjson)")
    if count < 0 or start < 0:
        raise ValueError("count and start must be >= 0")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = (os.cpu_count() or 1) if count >= 4 * BLOCK else 1
    args = (seed, fmt == "csv", invalid_share, drop_share, withdraw_share, drop_seed)
    totals = dict.fromkeys(COUNT_KEYS, 0)
    totals["bytes"] = 0  # uncompressed bytes

    with open(path, "wb") as raw:
        out: BinaryIO = raw
        gz = None
        if gzip:
            # mtime=0 and no file name in the header: same arguments, same bytes.
            gz = gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0)
            out = gz  # type: ignore[assignment]
        try:
            if fmt == "csv":
                out.write(CSV_HEADER.encode())
                totals["bytes"] += len(CSV_HEADER)
            for data, counts in _rendered(start, count, args, workers):
                out.write(data)
                totals["bytes"] += len(data)
                for key, value in zip(COUNT_KEYS, counts, strict=True):
                    totals[key] += value
        finally:
            if gz is not None:
                gz.close()
    return totals


def _rendered(
    start: int, count: int, args: tuple, workers: int
) -> Iterator[tuple[bytes, list[int]]]:
    if workers <= 1:
        for blk, off, n in _blocks(start, count):
            yield _render_block(blk, off, n, *args)
        return
    # Bounded window of in-flight blocks: memory stays flat even when writing is slower.
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future] = deque()
        for blk, off, n in _blocks(start, count):
            pending.append(pool.submit(_render_block, blk, off, n, *args))
            if len(pending) >= 3 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the render workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.gen_members", description="Generate a synthetic member snapshot."
    )
    p.add_argument("out", help="output file (parent directories are created)")
    p.add_argument("--count", type=int, required=True, help="number of member indexes")
    p.add_argument("--start", type=int, default=0, help="first member index")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--format", dest="fmt", choices=("csv", "ndjson"), default="csv")
    p.add_argument("--gzip", action="store_true", help="gzip the output (level 1)")
    p.add_argument("--invalid-share", type=float, default=0.05)
    p.add_argument("--drop-share", type=float, default=0.0)
    p.add_argument("--withdraw-share", type=float, default=0.0)
    p.add_argument("--drop-seed", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="render processes (default: CPUs)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    counts = generate(
        a.out,
        a.count,
        start=a.start,
        seed=a.seed,
        fmt=a.fmt,
        gzip=a.gzip,
        invalid_share=a.invalid_share,
        drop_share=a.drop_share,
        withdraw_share=a.withdraw_share,
        drop_seed=a.drop_seed,
        workers=a.workers,
    )
    elapsed = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    # CPU seconds too: on a shared machine wall time says more about the neighbours.
    summary: dict[str, float] = {
        **counts,
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu, 3),
    }
    summary["rows_per_s"] = int(counts["rows"] / elapsed) if elapsed > 0 else 0
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
