"""Identifier normalisation and hashing by TikTok's rules (email, phone, IDFA, GAID, pre-hashed).

The refresh stage calls `Hasher.digest` once per identifier; the plain `normalize_*` functions
are the reference it must agree with (and what tests and tools use).

Choices (the design brief's "Normalisation" rules; nothing more is invented, e.g. no Gmail dot
stripping):

- Every rejection is a `RejectedIdentifier` with a short `reason` code (see `REJECTION_REASONS`);
  messages never repeat the value, because identifiers are personal data and end up in logs.
- Length caps: 320 characters for emails, 64 for the others, measured after trimming; values
  more than 64 characters over the cap are refused without being trimmed at all.
- Email: trim, lowercase; one `@`, a non-empty local part, a domain with a dot not at either
  end, and no whitespace or other unprintable character inside.
- Phone: `phonenumbers` decides (parse + `is_valid_number`, formatted as E.164). The one rule
  added on top: a value whose first digits, once spaces/dashes/dots/brackets are removed, are
  `00` is read as international (`00` -> `+`) whatever the region; `phonenumbers` alone only does
  that for regions whose international prefix is `00` (not the US, whose prefix is `011`).
  Like `phonenumbers`, text around the number is ignored ("Tel: ..."), vanity numbers (three or
  more letters) are converted to digits and an extension is dropped. A region `phonenumbers`
  does not know is a configuration error: `ValueError`, not a rejection, so the job fails
  loudly instead of rejecting every phone.
- IDFA / GAID: trim, lowercase; 8-4-4-4-12 hex, or 32 hex digits without dashes (re-dashed);
  the all-zero id (limit ad tracking) is refused.
- Pre-hashed: trim; exactly 64 hex digits, lowercased; anything else is refused, never re-hashed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from enum import StrEnum
from functools import lru_cache
from typing import Final

import phonenumbers
from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    NumberParseException,
    PhoneMetadata,
    PhoneNumberDesc,
)


class IdType(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    IDFA = "idfa"
    GAID = "gaid"


# One table: identifier type -> TikTok id_schema.
ID_SCHEMA: dict[IdType, str] = {
    IdType.EMAIL: "EMAIL_SHA256",
    IdType.PHONE: "PHONE_SHA256",
    IdType.IDFA: "IDFA_SHA256",
    IdType.GAID: "AAID_SHA256",
}
SCHEMA_ID_TYPE: dict[str, IdType] = {schema: id_type for id_type, schema in ID_SCHEMA.items()}

# Source column -> (identifier type, value already SHA-256 hashed by the CDP?)
COLUMNS: dict[str, tuple[IdType, bool]] = {
    "email": (IdType.EMAIL, False),
    "phone": (IdType.PHONE, False),
    "idfa": (IdType.IDFA, False),
    "gaid": (IdType.GAID, False),
    "email_sha256": (IdType.EMAIL, True),
    "phone_sha256": (IdType.PHONE, True),
    "idfa_sha256": (IdType.IDFA, True),
    "gaid_sha256": (IdType.GAID, True),
}

REJECTION_REASONS: Final = frozenset(
    {
        "not_a_string",  # the value is not text (None counts as "empty")
        "empty",
        "too_long",
        "email_invalid",
        "phone_invalid",
        "phone_no_region",  # national number and no default region to read it with
        "device_id_invalid",
        "device_id_zero",
        "hash_invalid",
        "encoding_invalid",  # hash_normalized given text UTF-8 cannot encode (lone surrogates)
    }
)

EMAIL_MAX_LEN: Final = 320
OTHER_MAX_LEN: Final = 64
_MAX_PADDING: Final = 64  # whitespace we are willing to trim from an over-long value

_HEX: Final = "0123456789abcdef"
_ZERO_UUID: Final = "00000000-0000-0000-0000-000000000000"


class RejectedIdentifier(ValueError):
    """A value that cannot be sent to TikTok; `reason` is a short snake_case code to count."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(reason, message)  # args keep both, so the error pickles intact
        self.reason = reason
        self.message = message or reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def _prepare(value: object, cap: int) -> str:
    """Type check, trim and length-check a raw value."""
    if not isinstance(value, str):
        if value is None:
            raise RejectedIdentifier("empty", "no value")
        raise RejectedIdentifier("not_a_string", f"expected text, got {type(value).__name__}")
    if len(value) > cap:
        if len(value) > cap + _MAX_PADDING:
            raise RejectedIdentifier("too_long", f"longer than {cap} characters")
        value = value.strip()
        if len(value) > cap:
            raise RejectedIdentifier("too_long", f"longer than {cap} characters")
    else:
        value = value.strip()
    if not value:
        raise RejectedIdentifier("empty", "blank value")
    return str(value)  # a str subclass becomes a plain str


# --- email ------------------------------------------------------------------------------------


def normalize_email(value: str) -> str:
    """Trimmed, lowercased address (the reference: one check per rule, each with its message)."""
    s = _prepare(value, EMAIL_MAX_LEN).lower()
    local, at, domain = s.partition("@")
    if not at:
        raise RejectedIdentifier("email_invalid", "no '@'")
    if not local:
        raise RejectedIdentifier("email_invalid", "empty local part")
    if "@" in domain:
        raise RejectedIdentifier("email_invalid", "more than one '@'")
    if "." not in domain or domain[0] == "." or domain[-1] == ".":
        raise RejectedIdentifier("email_invalid", "domain needs a dot that is not at either end")
    # isprintable() is False for every whitespace character but the ASCII space, and for controls.
    if " " in s or not s.isprintable():
        raise RejectedIdentifier("email_invalid", "whitespace or control character inside")
    return s


# --- device ids -------------------------------------------------------------------------------


def normalize_device_id(value: str) -> str:
    """IDFA/GAID as a lowercase, dashed 8-4-4-4-12 UUID; the all-zero id is refused."""
    s = _prepare(value, OTHER_MAX_LEN).lower()
    if len(s) == 36:
        if s[8] != "-" or s[13] != "-" or s[18] != "-" or s[23] != "-":
            raise RejectedIdentifier("device_id_invalid", "not an 8-4-4-4-12 UUID")
        bare = s.replace("-", "")
        # strip(_HEX) leaves "" only when every character is a lowercase hex digit.
        if len(bare) != 32 or bare.strip(_HEX):
            raise RejectedIdentifier("device_id_invalid", "not an 8-4-4-4-12 UUID")
    elif len(s) == 32:
        if s.strip(_HEX):
            raise RejectedIdentifier("device_id_invalid", "not 32 hex digits")
        s = f"{s[:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:]}"
    else:
        raise RejectedIdentifier("device_id_invalid", "not a UUID (36 or 32 characters)")
    if s == _ZERO_UUID:
        raise RejectedIdentifier("device_id_zero", "all-zero id (limit ad tracking)")
    return s


# --- pre-hashed -------------------------------------------------------------------------------


def normalize_prehashed(value: str) -> str:
    """A CDP-supplied SHA-256: 64 hex digits, lowercased. Never re-hashed."""
    s = _prepare(value, OTHER_MAX_LEN).lower()
    if len(s) != 64 or s.strip(_HEX):
        raise RejectedIdentifier("hash_invalid", "not a SHA-256 hex digest (64 hex digits)")
    return s


# --- phone: the reference ---------------------------------------------------------------------

# Formatting a person types between digits; removing it never changes phonenumbers' reading of
# a value made only of ASCII digits, a leading '+' and these (checked by the corpus test).
_PHONE_FORMATTING: Final = str.maketrans("", "", " -.()")
# phonenumbers starts a number at the first plus sign or digit (its _VALID_START_CHAR).
_PHONE_START: Final = re.compile(r"[+\uff0b\d]")
_SUPPORTED_REGIONS: Final = frozenset(phonenumbers.SUPPORTED_REGIONS)

# phonenumbers recompiles its metadata regexes through re's 512-entry cache, which thrashes once
# numbers of many countries go by (5x slower); its own pattern cache is bounded by the metadata.
if hasattr(phonenumbers, "enable_pattern_cache"):  # absent from older releases
    phonenumbers.enable_pattern_cache()


def phone_region(region: str | None) -> str | None:
    """Canonical default region ("us" -> "US"); ValueError for one phonenumbers does not know."""
    if region is None or not region.strip():
        return None
    code = region.strip().upper()
    if code not in _SUPPORTED_REGIONS:
        raise ValueError(f"unknown phone region {region!r}: use an ISO 3166 code such as 'US'")
    return code


def _phone_input(s: str) -> str:
    """The documented 00 rule: a leading 00 (formatting ignored) is an international prefix."""
    compact = s.translate(_PHONE_FORMATTING)
    return "+" + compact[2:] if compact.startswith("00") else s


def _phone_verdict(s: str, region: str | None) -> tuple[str | None, str, str]:
    """phonenumbers' verdict on a trimmed value: (E.164, "", "") or (None, reason, message)."""
    s = _phone_input(s)
    try:
        number = phonenumbers.parse(s, region)
        valid = phonenumbers.is_valid_number(number)
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    except NumberParseException as error:
        if error.error_type == NumberParseException.INVALID_COUNTRY_CODE and region is None:
            start = _PHONE_START.search(s)
            if start is None or start.group() not in "+\uff0b":
                return None, "phone_no_region", "no country code and no default region"
        return None, "phone_invalid", f"not a phone number: {error}"
    except Exception:  # a third-party parser fed arbitrary text: any failure is about the input
        return None, "phone_invalid", "not a phone number"
    if not valid:
        return None, "phone_invalid", "not a valid number for its country"
    return e164, "", ""


def normalize_phone(value: str, region: str | None = None) -> str:
    """E.164 with the leading '+', as phonenumbers reads it (see the module docstring)."""
    s = _prepare(value, OTHER_MAX_LEN)
    e164, reason, message = _phone_verdict(s, phone_region(region))
    if e164 is None:
        raise RejectedIdentifier(reason, message)
    return e164


# --- dispatch and hashing ---------------------------------------------------------------------

# One table: identifier type -> normaliser (phones take the region too, see normalize()).
_NORMALIZERS: dict[IdType, Callable[[str], str]] = {
    IdType.EMAIL: normalize_email,
    IdType.IDFA: normalize_device_id,
    IdType.GAID: normalize_device_id,
}


def normalize(
    id_type: IdType, value: str, *, prehashed: bool = False, region: str | None = None
) -> str:
    """The normalised form of one identifier (a lowercase hex digest if `prehashed`)."""
    if prehashed:
        return normalize_prehashed(value)
    if id_type == IdType.PHONE:
        return normalize_phone(value, region)
    try:
        normalizer = _NORMALIZERS[id_type]
    except KeyError:
        raise ValueError(f"unknown identifier type {id_type!r}") from None
    return normalizer(value)


def hash_normalized(normalized: str) -> bytes:
    """SHA-256 of the normalised UTF-8 text: the 32 bytes TikTok's hex hash is made of."""
    if not isinstance(normalized, str):
        raise RejectedIdentifier("not_a_string", f"expected text, got {type(normalized).__name__}")
    try:
        return hashlib.sha256(normalized.encode("utf-8")).digest()
    except UnicodeEncodeError:
        raise RejectedIdentifier("encoding_invalid", "text UTF-8 cannot encode") from None


# --- phone: the fast path ---------------------------------------------------------------------
#
# phonenumbers.parse + is_valid_number cost ~50 us a number, 100x the SHA-256. Most of it is
# generic work (finding the number in free text, extensions, RFC 3966) that a value made only of
# digits and formatting does not need. For that shape the fast path repeats parse's remaining
# steps with the same metadata, and answers validity with one precompiled regex per (region,
# number length). Whatever it is not sure to read exactly as parse would, it hands to the
# reference (`_phone_verdict`). test_phone_fast_path_matches_phonenumbers pins the agreement.

_DEFER: Final = None  # fast path: "ask the reference"
_INVALID: Final = ""  # fast path: read exactly as parse reads it, and not a valid number
_MIN_NSN, _MAX_NSN = 2, 17  # phonenumbers' _MIN_LENGTH_FOR_NSN / _MAX_LENGTH_FOR_NSN


def _full(pattern: str | None) -> Callable[[str], object]:
    """A fullmatch test for a metadata pattern; a missing pattern never matches (as in parse)."""
    if not pattern:
        return lambda _number: None
    return re.compile(pattern).fullmatch


def _literal(pattern: str | None) -> str | None:
    """The pattern when it is plain digits ("0", "011"): str.startswith beats a regex."""
    return pattern if pattern and pattern.isascii() and pattern.isdigit() else None


def _starts(literal: str | None, pattern: re.Pattern[str] | None) -> tuple[str, ...]:
    if literal is not None:
        return (literal,)
    return tuple("0123456789") if pattern is not None else ()


class _RegionRules:
    """The parts of one region's metadata that parse and is_valid_number read."""

    def __init__(self, meta: PhoneMetadata) -> None:
        self.cc = meta.country_code
        self.cc_str = str(meta.country_code)
        idd = meta.international_prefix
        self.idd_literal = _literal(idd)
        self.idd = re.compile(idd) if idd and self.idd_literal is None else None
        prefix = meta.national_prefix_for_parsing
        self.prefix_literal = _literal(prefix)
        self.prefix = re.compile(prefix) if prefix and self.prefix_literal is None else None
        # Cheap gates, one str.startswith each: numbers that cannot begin with the IDD or the
        # national prefix skip those steps (a tuple of every digit: always look).
        self.idd_starts = _starts(self.idd_literal, self.idd)
        self.prefix_starts = _starts(self.prefix_literal, self.prefix)
        self.transform = bool(meta.national_prefix_transform_rule)
        general = meta.general_desc
        self.general = _full(general.national_number_pattern)
        self.lengths = tuple(general.possible_length)
        self.local_lengths = frozenset(general.possible_length_local_only)
        self.leading_digits = meta.leading_digits
        self._meta = meta
        # number length -> "is its type known?" test, compiled on first use of the length
        self.type_tests = _TypeTests(meta)

    def idd_end(self, digits: str) -> int:
        """Where an international (IDD) prefix at the start ends; -1 without one."""
        if self.idd_literal is not None:
            return len(self.idd_literal) if digits.startswith(self.idd_literal) else -1
        match = self.idd.match(digits) if self.idd is not None else None
        return -1 if match is None else match.end()

    def strip_prefix(self, number: str) -> str | None:
        """phonenumbers' _maybe_strip_national_prefix_carrier_code, minus the carrier code;
        _DEFER where a transform rule applies (a few small NANPA and island regions)."""
        if not number:
            return number
        if self.prefix_literal is not None:
            if not number.startswith(self.prefix_literal):
                return number
            end = len(self.prefix_literal)
        else:
            match = self.prefix.match(number) if self.prefix is not None else None
            if match is None:
                return number
            if self.transform:
                groups = match.groups()
                if not groups or groups[-1] is not None:
                    return _DEFER
            end = match.end()
        stripped = number[end:]
        if self.general(number) and not self.general(stripped):
            return number
        return stripped

    def length_check(self, number: str) -> str:
        """_test_number_length(number) for the general description, step for step."""
        n, lengths = len(number), self.lengths
        if n in self.local_lengths:
            return "local_only"
        if lengths[0] == n:
            return "possible"
        if lengths[0] > n:
            return "too_short"
        if lengths[-1] < n:
            return "too_long"
        return "possible" if n in lengths[1:] else "invalid_length"

    def national(self, number: str) -> str | None:
        """parse's last step: strip a national prefix if what is left has a possible length."""
        stripped = self.strip_prefix(number)
        if stripped is None or stripped is number:
            return stripped
        return stripped if self.length_check(stripped) in ("possible", "too_long") else number

    def type_known(self, nsn: str) -> bool:
        """_number_type_helper(nsn) != UNKNOWN."""
        return self.type_tests[len(nsn)](nsn) is not None


def _never(_nsn: str) -> None:
    return None


class _TypeTests(dict[int, Callable[[str], object]]):
    """_number_type_helper(nsn) != UNKNOWN as one regex per number length: the general
    pattern as a lookahead, then any type pattern whose lengths allow that length."""

    def __init__(self, meta: PhoneMetadata) -> None:
        super().__init__()
        self._meta = meta

    def __missing__(self, n: int) -> Callable[[str], object]:
        meta = self._meta

        def applies(desc: PhoneNumberDesc | None) -> str | None:
            # _is_number_matching_desc: a length list, when present, must hold the length.
            if desc is None or not desc.national_number_pattern:
                return None
            if desc.possible_length and n not in desc.possible_length:
                return None
            return desc.national_number_pattern

        descs = [
            meta.premium_rate,
            meta.toll_free,
            meta.shared_cost,
            meta.voip,
            meta.personal_number,
            meta.pager,
            meta.uan,
            meta.voicemail,
            meta.fixed_line,
        ]
        if not meta.same_mobile_and_fixed_line_pattern:
            descs.append(meta.mobile)
        general = applies(meta.general_desc)
        types = [p for p in map(applies, descs) if p is not None]
        test: Callable[[str], object] = _never
        if general is not None and types:
            either = "|".join(f"(?:{p})" for p in types)
            test = re.compile(rf"(?=(?:{general})\Z)(?:{either})\Z").match
        self[n] = test
        return test


class _CallingCode:
    """One country calling code: the metadata parse uses and is_valid_number's region choice."""

    def __init__(self, cc: int) -> None:
        regions = COUNTRY_CODE_TO_REGION_CODE[cc]
        self.cc_str = str(cc)
        self.cc_len = len(self.cc_str)
        self.main = _rules_for(cc, regions[0])  # parse reads the main region's metadata
        # region_code_for_number: with several regions, leading digits pick one, else the first
        # that validates; is_valid_number_for_region then also wants the region's code to be cc.
        self.candidates: list[tuple[Callable[[str], object] | None, _RegionRules, bool]] = []
        for region in regions:
            rules = _rules_for(cc, region)
            if rules is None:
                continue
            lead = rules.leading_digits if len(regions) > 1 else None
            self.candidates.append(
                (re.compile(lead).match if lead else None, rules, rules.cc == cc)
            )
        # Most numbers are settled by the first region alone (the only one, or US for +1):
        # callers try `first_tests` inline and call is_valid() only if `alone` is False.
        first = self.candidates[0] if self.candidates else None
        usable = first is not None and first[0] is None and first[2]
        self.first_tests = first[1].type_tests if first is not None and usable else None
        self.alone = usable and len(self.candidates) == 1

    def is_valid(self, nsn: str) -> bool:
        for lead, rules, same_cc in self.candidates:
            if lead is not None:
                if lead(nsn):
                    return same_cc and rules.type_known(nsn)
            elif rules.type_known(nsn):
                return same_cc
        return False


_RULES: dict[tuple[int, str], _RegionRules | None] = {}
_CALLING_CODES: dict[int, _CallingCode | None] = {}


def _rules_for(cc: int, region: str) -> _RegionRules | None:
    key = (cc, region)
    if key not in _RULES:  # built lazily: ~250 regions, most never seen by one job
        meta = PhoneMetadata.metadata_for_region_or_calling_code(cc, region)
        _RULES[key] = _RegionRules(meta) if meta is not None else None
    return _RULES[key]


def _calling_code(cc: int) -> _CallingCode | None:
    if cc not in _CALLING_CODES:
        code = _CallingCode(cc) if cc in COUNTRY_CODE_TO_REGION_CODE else None
        _CALLING_CODES[cc] = code if code is not None and code.main is not None else None
    return _CALLING_CODES[cc]


def _code_of_start(start: str) -> _CallingCode | None:
    """_extract_country_code: the first 1-3 digit prefix of `start` that is a calling code."""
    if start[:1] == "0" or not (start.isascii() and start.isdigit()):
        return None
    for size in (1, 2, 3):
        if int(start[:size]) in COUNTRY_CODE_TO_REGION_CODE:
            return _calling_code(int(start[:size]))
    return None


class _CodeByStart(dict[str, "_CallingCode | None"]):
    """First three digits -> calling code, filled on first sight: one lookup a number."""

    def __missing__(self, start: str) -> _CallingCode | None:
        code = self[start] = _code_of_start(start)
        return code


_CODE_OF_START: Final = _CodeByStart()


def _international(digits: str) -> str | None:
    """parse + is_valid_number + E.164 for the ASCII digits after '+' (or 00, or an IDD)."""
    if len(digits) <= _MIN_NSN:  # parse: "too short after IDD"
        return _DEFER
    code = _CODE_OF_START[digits[:3]]
    if code is None:  # parse raises, or retries without the '+'
        return _DEFER
    rules = code.main
    nsn = digits[code.cc_len :]
    if len(nsn) < _MIN_NSN or rules is None:
        return _DEFER
    e164 = "+" + digits
    if nsn.startswith(rules.prefix_starts):
        stripped = rules.national(nsn)
        if stripped is None:
            return _DEFER
        if stripped is not nsn:
            nsn, e164 = stripped, f"+{code.cc_str}{stripped}"
    if len(nsn) > _MAX_NSN:
        return _DEFER
    tests = code.first_tests
    if tests is not None and tests[len(nsn)](nsn) is not None:
        return e164
    return _INVALID if code.alone or not code.is_valid(nsn) else e164


def _national(digits: str, home: _RegionRules, home_code: _CallingCode) -> str | None:
    """The same for ASCII digits without '+', read with the destination's region."""
    if len(digits) < 3:  # below 3 digits, formatting can change parse's reading: let it decide
        return _DEFER
    if digits.startswith(home.idd_starts):
        end = home.idd_end(digits)
        if end >= 0 and digits[end : end + 1] != "0":  # parse strips an IDD if a code can follow
            return _international(digits[end:])
    rules, nsn, cc_str = home, digits, home.cc_str
    if digits.startswith(cc_str):
        # _maybe_extract_country_code: a number starting with the region's own calling code
        # loses it if that makes the number fit the region (or it was too long before).
        rest = home.strip_prefix(digits[len(cc_str) :])
        if rest is None or home_code.main is None:
            return _DEFER
        fits_better = not home.general(digits) and home.general(rest)
        if fits_better or home.length_check(digits) == "too_long":
            rules, nsn = home_code.main, rest
            if len(nsn) < _MIN_NSN:
                return _DEFER
    if nsn.startswith(rules.prefix_starts):
        stripped = rules.national(nsn)
        if stripped is None:
            return _DEFER
        nsn = stripped
    if len(nsn) > _MAX_NSN:
        return _DEFER
    tests = home_code.first_tests
    if (tests is not None and tests[len(nsn)](nsn) is not None) or (
        not home_code.alone and home_code.is_valid(nsn)
    ):
        return f"+{cc_str}{nsn}"
    return _INVALID


_sha256 = hashlib.sha256
# Device ids in the common shape pass one regex (faster than str methods for this one);
# anything else takes the general route, which gives the same answer and the reason.
_UUID36: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch
_EMAIL, _PHONE, _IDFA, _GAID = IdType.EMAIL, IdType.PHONE, IdType.IDFA, IdType.GAID


class Hasher:
    """Normalise + hash with fast paths: one per (job, phone region).

    Gives exactly what hash_normalized(normalize(...)) gives. Valid emails and device ids
    are checked without building errors; phones in plain shapes (E.164, 00/IDD prefixes,
    national numbers; spaces, dashes, dots, brackets) are read from phonenumbers' metadata
    without its parser; the rest go through phonenumbers, whose verdicts an LRU cache keeps,
    keyed by the trimmed value. Meant to be one per job; sharing one between threads is safe
    (its caches only ever add entries that are equal whoever computes them), not faster.
    """

    def __init__(self, region: str | None = None, cache_size: int = 100_000) -> None:
        self.region = phone_region(region)
        self._home: _RegionRules | None = None
        self._home_code: _CallingCode | None = None
        if self.region is not None:
            cc = phonenumbers.country_code_for_region(self.region)
            self._home = _rules_for(cc, self.region)
            self._home_code = _calling_code(cc)
        self._phone_slow = lru_cache(maxsize=cache_size)(self._reference_phone)
        self._normalizers: dict[IdType, Callable[[str], str]] = {
            IdType.EMAIL: normalize_email,
            IdType.PHONE: self.normalize_phone,
            IdType.IDFA: normalize_device_id,
            IdType.GAID: normalize_device_id,
        }

    def _reference_phone(self, s: str) -> tuple[str | None, str, str]:
        return _phone_verdict(s, self.region)

    def normalize_phone(self, value: str) -> str:
        """normalize_phone(value, self.region), fast where the shape allows."""
        s = value.strip() if value.__class__ is str and len(value) <= OTHER_MAX_LEN else ""
        if not s:
            s = _prepare(value, OTHER_MAX_LEN)  # raises, or trims a padded / str-subclass value
        e164: str | None = _DEFER
        if s.isascii():  # other scripts (and lone surrogates, which encode() refuses) go below
            # Drop formatting in one C call (bytes.translate: ~3x faster than the str forms).
            b = s.encode().translate(None, b" -.()")
            if b[:1] == b"+":  # also "(+44) 20 ...", the plus after a bracket
                b = b[1:]
                if b.isdigit():
                    e164 = _international(b.decode())
            elif b.isdigit():
                if b[:2] == b"00":  # the documented 00 rule
                    e164 = _international(b[2:].decode())
                elif self._home is not None and self._home_code is not None:
                    e164 = _national(b.decode(), self._home, self._home_code)
        if e164:
            return e164
        if e164 == _INVALID:
            raise RejectedIdentifier("phone_invalid", "not a valid number for its country")
        e164, reason, message = self._phone_slow(s)
        if e164 is None:
            raise RejectedIdentifier(reason, message)
        return e164

    def normalize(self, id_type: IdType, value: str, prehashed: bool = False) -> str:
        """The normalised text (for pre-hashed values: the lowercase hex digest)."""
        if prehashed:
            return normalize_prehashed(value)
        try:
            normalizer = self._normalizers[id_type]
        except KeyError:
            raise ValueError(f"unknown identifier type {id_type!r}") from None
        return normalizer(value)

    def digest(self, id_type: IdType, value: str, prehashed: bool = False) -> bytes:
        """The 32-byte SHA-256 digest TikTok matches on; raises RejectedIdentifier."""
        if prehashed:
            return bytes.fromhex(normalize_prehashed(value))
        # Identity tests, not ==: a StrEnum's == costs more than the email check itself.
        if id_type is _EMAIL:
            if value.__class__ is str and len(value) <= EMAIL_MAX_LEN:
                s = value.strip().lower()
                # normalize_email's checks without building errors (a regex is slower here).
                local, _, domain = s.partition("@")
                if (
                    local
                    and "." in domain
                    and "@" not in domain
                    and domain[0] != "."
                    and domain[-1] != "."
                    and " " not in s
                    and s.isprintable()
                ):
                    return _sha256(s.encode()).digest()
            return _sha256(normalize_email(value).encode()).digest()
        if id_type is _IDFA or id_type is _GAID:
            if value.__class__ is str and len(value) <= OTHER_MAX_LEN:
                s = value.strip().lower()
                if _UUID36(s) and s != _ZERO_UUID:
                    return _sha256(s.encode()).digest()
            return _sha256(normalize_device_id(value).encode()).digest()
        if id_type is _PHONE:
            return _sha256(self.normalize_phone(value).encode()).digest()
        # Types given as plain strings ("email"): the general route. Normalised text never
        # holds lone surrogates (emails with them fail isprintable), so encode() is safe.
        return _sha256(self.normalize(id_type, value).encode()).digest()

    def cache_info(self) -> tuple[int, int, int | None, int]:
        """(hits, misses, maxsize, currsize) of the phonenumbers verdict cache: hits + misses
        is how many phones the fast path handed over."""
        info = self._phone_slow.cache_info()
        return info.hits, info.misses, info.maxsize, info.currsize


__all__ = [
    "COLUMNS",
    "EMAIL_MAX_LEN",
    "ID_SCHEMA",
    "OTHER_MAX_LEN",
    "REJECTION_REASONS",
    "SCHEMA_ID_TYPE",
    "Hasher",
    "IdType",
    "RejectedIdentifier",
    "hash_normalized",
    "normalize",
    "normalize_device_id",
    "normalize_email",
    "normalize_phone",
    "normalize_prehashed",
    "phone_region",
]
