"""Generate synthetic member snapshots (CSV / NDJSON, optionally gzip) for demos, tests and
benchmarks: streamed, deterministic (member i is a pure function of (seed, i)), and fast.

    python -m scripts.gen_members OUT --count N [--start 0] [--seed 1] [--format csv|ndjson]
        [--gzip] [--invalid-share 0.05] [--drop-share 0.0] [--withdraw-share 0.0] [--drop-seed 2]

A "changed snapshot" of the same audience: same --seed, a larger --count (members appended),
--drop-share (member i is left out when a hash of (drop_seed, i) falls under the share) and
--withdraw-share (consent false for another hashed share). Everything else about a member is
unchanged, so the diff between two snapshots is exactly the appended, dropped and withdrawn
members.

Rows look like real CDP exports: mixed-case emails, sometimes padded or +tagged; phones in
E.164, "+1 (415) 2xx-xxxx", US national and "00"-prefixed international forms (valid US / GB / DE
numbers per the phonenumbers metadata); IDFA (uppercase) or GAID (lowercase) on some rows;
sometimes pre-hashed columns instead of raw ones; consent mostly true in varied spellings.
``invalid_share`` of the rows carry one deliberately bad identifier (email without "@", too-short
phone, all-zero IDFA, 63-char hash) and 1/50 of that share are malformed lines (wrong CSV column
count / broken JSON) so that rejections are exercised.
"""

from __future__ import annotations

import argparse
import gzip as gzip_module
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import BinaryIO

CSV_HEADER = (
    "user_id,email,phone,idfa,gaid,email_sha256,phone_sha256,idfa_sha256,gaid_sha256,consent\n"
)
BLOCK_ROWS = 8192  # rows rendered per write: amortises write() and gzip calls

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_SCALE = 1 << 24  # resolution of the per-member share decisions

_FIRST = (
    "James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy "
    "Matthew Betty Anthony Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily Andrew "
    "Donna Joshua Michelle Kenneth Carol Kevin Amanda Brian Dorothy George Melissa Timothy "
    "Deborah Ronald Stephanie Edward Rebecca Jason Sharon Jeffrey Laura Ryan Cynthia Jacob "
    "Kathleen Gary Amy"
).split()
_LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
    "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Muller Schmidt "
    "Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Koch Richter Klein Wolf"
).split()
assert len(_FIRST) == 64 and len(_LAST) == 64

# (first-name table, separator, last-name table) per case style; index = 3 bits of the hash.
_LOWER_F = [n.lower() for n in _FIRST]
_LOWER_L = [n.lower() for n in _LAST]
_UPPER_F = [n.upper() for n in _FIRST]
_UPPER_L = [n.upper() for n in _LAST]
_NAME_STYLES = (
    (_FIRST, ".", _LAST),
    (_FIRST, ".", _LAST),
    (_FIRST, ".", _LAST),
    (_LOWER_F, ".", _LOWER_L),
    (_LOWER_F, ".", _LOWER_L),
    (_LOWER_F, "_", _LOWER_L),
    (_UPPER_F, ".", _UPPER_L),
    (_FIRST, "", _LAST),
)
_DOMAINS = (
    "Example.com",
    "example.com",
    "example.com",
    "EXAMPLE.COM",
    "example.org",
    "Example.net",
    "mail.example.com",
    "example.co.uk",
    "example.de",
    "Example.org",
    "example.net",
    "example.com",
    "shop.example",
    "example.io",
    "Example.com",
    "example.com",
)
_PADS = (
    (" ", ""),
    ("", " "),
    ("  ", "  "),
    ("", ""),
    ("", ""),
    ("", ""),
    ("", ""),
    ("", ""),
)
_TAGS = ("+news", "+promo", "+cdp", "+1")

# Area codes and exchanges that phonenumbers' metadata accepts as valid US numbers (checked in
# tests). 555 and N11 exchanges are avoided: they are reserved or fictional in places.
_US_AREAS = (
    212, 213, 214, 215, 216, 303, 305, 310, 312, 313, 404, 407, 408, 410, 412, 415, 503, 504,
    512, 602, 612, 617, 646, 702, 713, 718, 720, 773, 801, 813, 818, 916, 919, 206, 202, 201,
)  # fmt: skip
_US_EXCH = tuple(e for e in range(200, 1000) if e != 555 and e % 100 != 11)
_DE_PREFIXES = ("151", "152", "157", "160", "170", "171", "176", "175")

_CONSENT_TRUE = ("true", "1", "yes", "", "TRUE", "Y", "", "true")
_CONSENT_FALSE = ("false", "0", "no", "FALSE", "N", "false", "0", "no")
_JSON_TRUE = ("true", "true", '"yes"', "1", None, None, "true", '"Y"')  # None: key omitted
_JSON_FALSE = ("false", "false", '"no"', "0", "false", '"N"', "false", '"false"')
_ZERO_IDFA = "00000000-0000-0000-0000-000000000000"


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash (bijective)."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _key(seed: int, salt: int) -> int:
    return _mix(seed * 0xD1B54A32D192ED03 + salt)


def _thresholds(invalid_share: float) -> tuple[int, int]:
    inv = int(round(max(0.0, min(1.0, invalid_share)) * _SCALE))
    return inv, inv // 50


def member_status(i: int, seed: int = 1, invalid_share: float = 0.05) -> str:
    """ "ok", "invalid" (one bad identifier) or "malformed" (broken line) for member i."""
    h = _mix(i * _GOLDEN + _key(seed, 1))
    inv_thr, mal_thr = _thresholds(invalid_share)
    b = h & 0xFFFFFF
    return "malformed" if b < mal_thr else "invalid" if b < inv_thr else "ok"


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


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
) -> dict[str, int]:
    """Write members start..start+count-1 to ``path``; return counts of what was written."""
    if fmt not in ("csv", "ndjson"):
        raise ValueError(f"unknown format {fmt!r} (csv or ndjson)")
    if count < 0 or start < 0:
        raise ValueError("count and start must be >= 0")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {
        "rows": 0,  # data lines written
        "members": 0,  # well-formed member lines
        "invalid": 0,  # members with one deliberately bad identifier
        "malformed": 0,  # broken lines (wrong column count / bad JSON)
        "dropped": 0,
        "withdrawn": 0,
        "consent_false": 0,  # members written with consent false (incl. withdrawn)
        "bytes": 0,  # uncompressed bytes
    }
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
                counts["bytes"] += len(CSV_HEADER)
            end = start + count
            for block_start in range(start, end, BLOCK_ROWS):
                text = _render(
                    block_start,
                    min(block_start + BLOCK_ROWS, end),
                    seed,
                    invalid_share,
                    drop_share,
                    withdraw_share,
                    drop_seed,
                    counts,
                    fmt == "csv",
                )
                data = text.encode()
                counts["bytes"] += len(data)
                out.write(data)
        finally:
            if gz is not None:
                gz.close()
    return counts


def _render(
    lo: int,
    hi: int,
    seed: int,
    invalid_share: float,
    drop_share: float,
    withdraw_share: float,
    drop_seed: int,
    counts: dict[str, int],
    as_csv: bool,
) -> str:
    """Render members lo..hi-1. One long function on purpose: locals are fast, calls are not."""
    m64 = _M64
    golden = _GOLDEN
    key = _key(seed, 1)
    key2 = _key(seed, 2)
    dkey = _key(drop_seed, 3)
    inv_thr, mal_thr = _thresholds(invalid_share)
    drop_thr = int(round(max(0.0, min(1.0, drop_share)) * (1 << 32)))
    wd_thr = int(round(max(0.0, min(1.0, withdraw_share)) * (1 << 32)))
    use_dhash = drop_thr > 0 or wd_thr > 0
    sha = _sha
    styles, domains, pads, tags = _NAME_STYLES, _DOMAINS, _PADS, _TAGS
    areas, exchs, n_exch, n_areas = _US_AREAS, _US_EXCH, len(_US_EXCH), len(_US_AREAS)
    de_prefixes = _DE_PREFIXES
    lines: list[str] = []
    append = lines.append
    n_rows = n_members = n_invalid = n_malformed = n_dropped = n_withdrawn = n_false = 0

    for i in range(lo, hi):
        withdrawn = False
        if use_dhash:
            z = i * golden + dkey
            z &= m64
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
            z ^= z >> 31
            if (z & 0xFFFFFFFF) < drop_thr:
                n_dropped += 1
                continue
            withdrawn = (z >> 32) < wd_thr

        # h: share decisions; h2: presentation choices. Both pure functions of (seed, i).
        h = (i * golden + key) & m64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & m64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & m64
        h ^= h >> 31
        h2 = (h + key2) & m64
        h2 = ((h2 ^ (h2 >> 30)) * 0xBF58476D1CE4E5B9) & m64
        h2 = ((h2 ^ (h2 >> 27)) * 0x94D049BB133111EB) & m64
        h2 ^= h2 >> 31

        n_rows += 1
        b = h & 0xFFFFFF
        if b < mal_thr:
            n_malformed += 1
            if as_csv:
                append(f"u{i},broken-row\n")
            else:
                append(f'{{"user_id":"u{i}","email":"broken{i}@example.com"\n')
            continue
        n_members += 1
        bad_kind = ((h >> 24) & 3) if b < inv_thr else -1
        if bad_kind >= 0:
            n_invalid += 1

        # email
        e_sel = (h >> 42) & 0x3FF
        email = email_sha = ""
        first_name = ""
        if e_sel >= 30 or bad_kind == 0:  # ~3% of members have no email at all
            firsts, sep, lasts = styles[(h2 >> 12) & 7]
            first_name = firsts[h2 & 63]
            local = f"{first_name}{sep}{lasts[(h2 >> 6) & 63]}{i}"
            if ((h2 >> 18) & 15) == 0:
                local += tags[(h2 >> 22) & 3]
            domain = domains[(h2 >> 24) & 15]
            if bad_kind == 0:
                email = f"{local}.{domain}"  # no "@"
            elif e_sel < 110:  # ~8%: the CDP sends it pre-hashed
                email_sha = sha(f"{local}@{domain}".lower())
                if e_sel < 50:
                    email_sha = email_sha.upper()
            else:
                pre, post = pads[(h2 >> 15) & 7]
                email = f"{pre}{local}@{domain}{post}"
        if bad_kind == 3:
            email_sha = sha(f"u{i}")[:63]

        # phone
        p_sel = (h >> 52) & 0x3FF
        phone = phone_sha = ""
        phone_num = False  # NDJSON: write as a JSON number
        if p_sel >= 150 or bad_kind == 1:  # ~85% have a phone
            if bad_kind == 1:
                phone = str(10000 + i % 90000)  # 5 digits: too short anywhere
            else:
                country = (h2 >> 28) & 31
                pf = (h2 >> 33) & 15
                if country < 26:  # US
                    k = i // 10000
                    a = areas[(k // n_exch) % n_areas]
                    e = exchs[k % n_exch]
                    ln = i % 10000
                    e164 = f"+1{a}{e}{ln:04d}"
                    if pf < 5:
                        phone = e164
                    elif pf < 8:
                        phone = f"+1 ({a}) {e}-{ln:04d}"
                    elif pf < 11:
                        phone = f"({a}) {e}-{ln:04d}"
                    elif pf < 13:
                        phone = f"{a}-{e}-{ln:04d}"
                    elif pf == 13:
                        phone = f"{a}{e}{ln:04d}"
                    elif pf == 14:
                        phone = f"1{a}{e}{ln:04d}"
                        phone_num = True
                    else:
                        phone = f"+1 {a} {e} {ln:04d}"
                elif country < 29:  # GB mobile
                    nat = f"7{1 + (i // 100000000) % 3}{i % 100000000:08d}"
                    e164 = f"+44{nat}"
                    if pf < 8:
                        phone = e164
                    elif pf < 15:
                        phone = f"+44 {nat[:4]} {nat[4:]}"
                    else:
                        phone = f"0044 {nat[:4]} {nat[4:]}"
                else:  # DE mobile
                    pre = de_prefixes[(i // 100000000) % 8]
                    sub = f"{i % 100000000:08d}"
                    e164 = f"+49{pre}{sub}"
                    if pf < 8:
                        phone = e164
                    elif pf < 15:
                        phone = f"+49 {pre} {sub}"
                    else:
                        phone = f"0049 {pre} {sub}"
                if p_sel < 200:  # ~5%: pre-hashed instead
                    phone_sha = sha(e164)
                    phone = ""
                    phone_num = False

        # device id
        d_sel = (h >> 32) & 0x3FF
        idfa = gaid = idfa_sha = gaid_sha = ""
        if bad_kind == 2:
            idfa = _ZERO_IDFA
        elif d_sel < 716:  # ~70% have a device id
            hx = f"{h2:016x}{(h * golden) & m64:016x}"
            uid = f"{hx[:8]}-{hx[8:12]}-{hx[12:16]}-{hx[16:20]}-{hx[20:]}"
            if d_sel < 358:
                if d_sel < 8:
                    idfa_sha = sha(uid)
                else:
                    idfa = uid.upper()
            elif d_sel < 366:
                gaid_sha = sha(uid)
            else:
                gaid = uid

        # consent
        c_sel = (h2 >> 37) & 7
        consent = not withdrawn and ((h2 >> 40) & 63) != 0  # ~1.6% opted out
        if withdrawn:
            n_withdrawn += 1
        if not consent:
            n_false += 1

        if as_csv:
            if ((h2 >> 46) & 63) == 0 and email:
                email = f'"{email}"'  # exercise the quoted-field path
            c = _CONSENT_TRUE[c_sel] if consent else _CONSENT_FALSE[c_sel]
            append(
                f"u{i},{email},{phone},{idfa},{gaid},{email_sha},{phone_sha},{idfa_sha},"
                f"{gaid_sha},{c}\n"
            )
        else:
            parts = [f'{{"user_id":"u{i}"']
            if email:
                if ((h2 >> 52) & 31) == 0:
                    parts.append(f',"email":["{email}","{first_name.lower()}{i}@work.example"]')
                else:
                    parts.append(f',"email":"{email}"')
            if phone:
                parts.append(f',"phone":{phone}' if phone_num else f',"phone":"{phone}"')
            if idfa:
                parts.append(f',"idfa":"{idfa}"')
            if gaid:
                parts.append(f',"gaid":"{gaid}"')
            if email_sha:
                parts.append(f',"email_sha256":"{email_sha}"')
            if phone_sha:
                parts.append(f',"phone_sha256":"{phone_sha}"')
            if idfa_sha:
                parts.append(f',"idfa_sha256":"{idfa_sha}"')
            if gaid_sha:
                parts.append(f',"gaid_sha256":"{gaid_sha}"')
            c = _JSON_TRUE[c_sel] if consent else _JSON_FALSE[c_sel]
            if c is not None:
                parts.append(f',"consent":{c}')
            parts.append("}\n")
            append("".join(parts))

    counts["rows"] += n_rows
    counts["members"] += n_members
    counts["invalid"] += n_invalid
    counts["malformed"] += n_malformed
    counts["dropped"] += n_dropped
    counts["withdrawn"] += n_withdrawn
    counts["consent_false"] += n_false
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.gen_members", description=__doc__.split("\n\n")[0]
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
    a = p.parse_args(argv)
    t0 = time.perf_counter()
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
    )
    elapsed = time.perf_counter() - t0
    summary = {**counts, "seconds": round(elapsed, 3)}
    summary["rows_per_s"] = int(counts["rows"] / elapsed) if elapsed > 0 else 0
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
