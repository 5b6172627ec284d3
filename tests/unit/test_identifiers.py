"""Identifier normalisation and hashing: TikTok's rules, known SHA-256 vectors, properties of
every normaliser, and the phone fast path's agreement with phonenumbers on a 100,000-number
corpus."""

from __future__ import annotations

import pickle
import re

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts.bench_hash import phone_corpus
from worker.identifiers import (
    COLUMNS,
    ID_SCHEMA,
    REJECTION_REASONS,
    SCHEMA_ID_TYPE,
    Hasher,
    IdType,
    RejectedIdentifier,
    hash_normalized,
    normalize,
    normalize_device_id,
    normalize_email,
    normalize_phone,
    normalize_prehashed,
    phone_region,
)

CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
UPPER_HASH = "973DFE463EC85785F5F95AF5BA3906EEDB2D931C24E69824A89EA65DBA4E813B"

E, P, A, G = IdType.EMAIL, IdType.PHONE, IdType.IDFA, IdType.GAID  # A: Apple IDFA, G: Google
PRE = "prehashed"  # marks a pre-hashed case in the table below

# (id type or PRE, raw value, default phone region, normalised text or rejection reason)
CASES = [
    # email
    (E, "  Test.User@Example.COM \t", None, "test.user@example.com"),
    (E, "John+Promo@Gmail.com", None, "john+promo@gmail.com"),  # plus tag kept
    (E, "j.o.h.n@gmail.com", None, "j.o.h.n@gmail.com"),  # no Gmail dot stripping
    (E, "ÜSER@Exämple.DE", None, "üser@exämple.de"),
    (E, "用户@例子.广告", None, "用户@例子.广告"),
    (E, "a@b.co", None, "a@b.co"),
    (E, "a@b@example.com", None, "email_invalid"),
    (E, "user@localhost", None, "email_invalid"),
    (E, "user@example.com.", None, "email_invalid"),
    (E, "user@.example.com", None, "email_invalid"),
    (E, "@example.com", None, "email_invalid"),
    (E, "user@", None, "email_invalid"),
    (E, "user.example.com", None, "email_invalid"),
    (E, "first last@example.com", None, "email_invalid"),
    (E, "user\t@example.com", None, "email_invalid"),
    (E, "user\u00a0x@example.com", None, "email_invalid"),
    (E, "user\x00@example.com", None, "email_invalid"),
    (E, "user\ud800@example.com", None, "email_invalid"),
    (E, "", None, "empty"),
    (E, " \n ", None, "empty"),
    (E, "a" * 315 + "@b.com", None, "too_long"),
    (E, " " * 60 + "a" * 300 + "@b.com", None, "a" * 300 + "@b.com"),  # padding is trimmed
    (E, " " * 90 + "a" * 300 + "@b.com", None, "too_long"),  # but not without bound
    # phone
    (P, "+1 (415) 555-2671", None, "+14155552671"),
    (P, "+14155552671", "GB", "+14155552671"),
    (P, "004915123456789", None, "+4915123456789"),
    (P, "0049 151 2345 6789", "US", "+4915123456789"),  # 00 even where the IDD is 011
    (P, "011 49 151 23456789", "US", "+4915123456789"),
    (P, "415-555-2671", "US", "+14155552671"),
    (P, "(415) 555.2671", "us", "+14155552671"),
    (P, "1-415-555-2671", "US", "+14155552671"),
    (P, "14155552671", "US", "+14155552671"),
    (P, "07911 123456", "GB", "+447911123456"),
    (P, "+44 (0)20 7946 0958", None, "+442079460958"),
    (P, "(+44) 20 7946 0958", "US", "+442079460958"),
    (
        P,
        "\uff10\uff17\uff19\uff11\uff11 \uff11\uff12\uff13\uff14\uff15\uff16",
        "GB",
        "+447911123456",
    ),  # fullwidth digits (phonenumbers)
    (P, "1-800-FLOWERS", "US", "+18003569377"),  # phonenumbers reads vanity numbers
    (P, "+1 415 555 2671 ext. 12", None, "+14155552671"),  # E.164 has no extension
    (P, "415 555", "US", "phone_invalid"),  # too short
    (P, "12", "US", "phone_invalid"),
    (P, "+1 415 555 26711", None, "phone_invalid"),  # too long
    (P, "call me maybe", "US", "phone_invalid"),  # letters
    (P, "n/a", None, "phone_invalid"),
    (P, "+1 415 555 2671\ud800", None, "+14155552671"),  # trailing junk is ignored...
    (P, "Tel: +1 415 555 2671", None, "+14155552671"),  # ...and leading text too (phonenumbers)
    (P, "+1 415\ud800 555 2671", None, "phone_invalid"),  # a lone surrogate inside
    (P, "+999 1234567", None, "phone_invalid"),  # no such country code
    (P, "415-555-2671", None, "phone_no_region"),
    (P, "07911 123456", None, "phone_no_region"),
    (P, "  ", "US", "empty"),
    (P, "+1 415 555 2671 " * 5, None, "too_long"),
    (P, "+1 415 555 2671" + " " * 60, None, "+14155552671"),  # padding is trimmed
    # IDFA / GAID
    (A, "6D92078A-8246-4BA4-AE5B-76104861E7DC", None, "6d92078a-8246-4ba4-ae5b-76104861e7dc"),
    (G, "6d92078a82464ba4ae5b76104861e7dc", None, "6d92078a-8246-4ba4-ae5b-76104861e7dc"),
    (G, " 38400000-8CF0-11BD-B23E-10B96E40000D\n", None, "38400000-8cf0-11bd-b23e-10b96e40000d"),
    (A, "00000000-0000-0000-0000-000000000000", None, "device_id_zero"),
    (G, "00000000000000000000000000000000", None, "device_id_zero"),
    (A, "6d92078a-8246-4ba4-ae5b-76104861e7d", None, "device_id_invalid"),  # 35 chars
    (A, "6d92078a-8246-4ba4-ae5b-76104861e7dcc", None, "device_id_invalid"),  # 37 chars
    (A, "6d92078a8-246-4ba4-ae5b-76104861e7dc", None, "device_id_invalid"),  # dash moved
    (G, "{6d92078a-8246-4ba4-ae5b-76104861e7dc}", None, "device_id_invalid"),
    (G, "6d92078a-8246-4ba4-ae5b-76104861e7dg", None, "device_id_invalid"),  # not hex
    (G, "6d92078a-8246-4ba4-ae5b-76104861e7d\u0660", None, "device_id_invalid"),
    (A, "", None, "empty"),
    # pre-hashed
    (PRE, UPPER_HASH, None, UPPER_HASH.lower()),
    (PRE, f"  {UPPER_HASH.lower()}\n", None, UPPER_HASH.lower()),
    (PRE, UPPER_HASH[:63], None, "hash_invalid"),
    (PRE, UPPER_HASH + "0", None, "too_long"),  # the 64-character cap comes first
    (PRE, UPPER_HASH[:63] + "G", None, "hash_invalid"),
    (PRE, UPPER_HASH[:32] + " " + UPPER_HASH[33:], None, "hash_invalid"),  # fromhex allows it
    (PRE, "test@example.com", None, "hash_invalid"),  # never re-hashed
]


def _case_id(case: tuple[object, str, str | None, str]) -> str:
    kind, value, region, _ = case
    return f"{kind}-{value[:24]!r}-{region}"


@pytest.mark.parametrize(("kind", "value", "region", "expected"), CASES, ids=map(_case_id, CASES))
def test_normalisation_table(kind: str, value: str, region: str | None, expected: str) -> None:
    prehashed = kind == PRE
    id_type = IdType.EMAIL if prehashed else IdType(kind)
    hasher = Hasher(region)
    if expected in REJECTION_REASONS:
        with pytest.raises(RejectedIdentifier) as general:
            normalize(id_type, value, prehashed=prehashed, region=region)
        with pytest.raises(RejectedIdentifier) as fast:
            hasher.digest(id_type, value, prehashed)
        assert general.value.reason == fast.value.reason == expected
        return
    assert normalize(id_type, value, prehashed=prehashed, region=region) == expected
    want = bytes.fromhex(expected) if prehashed else hash_normalized(expected)
    assert hasher.digest(id_type, value, prehashed) == want


def test_known_sha256_vectors() -> None:
    assert (
        hash_normalized("test@example.com").hex()
        == "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
    )
    assert (
        hash_normalized("+14155552671").hex()
        == "cb6880e416769253645cb9c6b8989154bf66a56a77fc14c81fb1019663cbb928"
    )
    assert (
        hash_normalized("6d92078a-8246-4ba4-ae5b-76104861e7dc").hex()
        == "31b806b4deec8c4cb1ffb18b9ab4ee1fa82a2b30e1f47902f04d03f5db023376"
    )
    hasher = Hasher("US")
    assert hasher.digest(E, " Test@Example.COM ").hex() == (
        "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
    )
    assert hasher.digest(P, "(415) 555-2671").hex() == (
        "cb6880e416769253645cb9c6b8989154bf66a56a77fc14c81fb1019663cbb928"
    )
    assert hasher.digest(A, "6D92078A82464BA4AE5B76104861E7DC").hex() == (
        "31b806b4deec8c4cb1ffb18b9ab4ee1fa82a2b30e1f47902f04d03f5db023376"
    )
    assert hasher.digest(E, UPPER_HASH, prehashed=True).hex() == UPPER_HASH.lower()


def test_tables_agree() -> None:
    assert set(ID_SCHEMA) == set(IdType)
    assert {SCHEMA_ID_TYPE[schema] for schema in ID_SCHEMA.values()} == set(IdType)
    assert ID_SCHEMA[IdType.GAID] == "AAID_SHA256"
    assert {column: COLUMNS[column][0] for column in ("email", "phone", "idfa", "gaid")} == {
        t.value: t for t in IdType
    }
    assert all(COLUMNS[f"{t}_sha256"] == (t, True) for t in IdType)
    assert ID_SCHEMA["email"] == "EMAIL_SHA256"  # plain strings work as keys (StrEnum)


def test_plain_string_types_take_the_same_route() -> None:
    hasher = Hasher("US")
    for id_type, value in (
        (E, "A@B.co"),
        (P, "415 555 2671"),
        (G, "6D92078A82464BA4AE5B76104861E7DC"),
    ):
        assert hasher.digest(str(id_type), value) == hasher.digest(id_type, value)
    with pytest.raises(ValueError, match="unknown identifier type"):
        hasher.digest("fax", "123")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown identifier type"):
        normalize("fax", "123")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, 14155552671, b"a@b.co", ["a@b.co"], 3.5])
def test_non_text_is_rejected(value: object) -> None:
    hasher = Hasher("US")
    for id_type in IdType:
        for prehashed in (False, True):
            with pytest.raises(RejectedIdentifier) as error:
                hasher.digest(id_type, value, prehashed)  # type: ignore[arg-type]
            assert error.value.reason == ("empty" if value is None else "not_a_string")
            with pytest.raises(RejectedIdentifier):
                normalize(id_type, value, prehashed=prehashed, region="US")  # type: ignore[arg-type]
    with pytest.raises(RejectedIdentifier):
        hash_normalized(value)  # type: ignore[arg-type]


def test_rejection_carries_reason_and_pickles() -> None:
    with pytest.raises(RejectedIdentifier) as caught:
        normalize_email("nobody")
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.reason == "email_invalid"
    assert str(error).startswith("email_invalid: ")
    assert "nobody" not in str(error)  # identifiers are personal data: never echoed
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.message) == (error.reason, error.message)


def test_phone_region_is_configuration() -> None:
    assert phone_region(" gb ") == "GB"
    assert phone_region(None) is None
    assert phone_region("") is None
    for bad in ("UK", "XX", "001", "USA"):
        with pytest.raises(ValueError, match="unknown phone region") as caught:
            Hasher(bad)
        assert not isinstance(caught.value, RejectedIdentifier)
        with pytest.raises(ValueError, match="unknown phone region"):
            normalize_phone("+14155552671", bad)


def test_hash_normalized_rejects_unencodable_text() -> None:
    with pytest.raises(RejectedIdentifier) as caught:
        hash_normalized("a\ud800b")
    assert caught.value.reason == "encoding_invalid"
    with pytest.raises(RejectedIdentifier):
        normalize_email("a\ud800b@example.com")  # lone surrogates are not printable


# --- properties -------------------------------------------------------------------------------

# Text near the shapes the normalisers look for, plus anything at all.
_NEAR = st.sampled_from("0123456789abcdefABCDEF@.+-() \t\n\u00a0\u0660\uff10\uff0b\ud800x#;:/")
TEXT = st.one_of(
    st.text(),
    st.text(st.one_of(_NEAR, st.characters()), max_size=80),
    st.text(_NEAR, max_size=70),
)
REGIONS = st.sampled_from([None, "US", "GB", "DE", "FR", "IN", "BR", "AR", "MX", "JP", "AU", "AG"])
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(fn: object, *args: object, **kwargs: object) -> str:
    try:
        return fn(*args, **kwargs)  # type: ignore[operator]
    except RejectedIdentifier as error:
        assert error.reason in REJECTION_REASONS
        return f"rejected:{error.reason}"


@SLOW
@given(value=TEXT, region=REGIONS)
def test_only_rejections_escape(value: str, region: str | None) -> None:
    hasher = Hasher(region)
    for fn in (normalize_email, normalize_device_id, normalize_prehashed):
        _outcome(fn, value)
    _outcome(normalize_phone, value, region)
    _outcome(hash_normalized, value)
    for id_type in IdType:
        for prehashed in (False, True):
            _outcome(normalize, id_type, value, prehashed=prehashed, region=region)
            _outcome(hasher.digest, id_type, value, prehashed)


@SLOW
@given(value=TEXT, region=REGIONS)
def test_normalisation_is_idempotent(value: str, region: str | None) -> None:
    for id_type in IdType:
        for prehashed in (False, True):
            first = _outcome(normalize, id_type, value, prehashed=prehashed, region=region)
            if not first.startswith("rejected:"):
                again = normalize(id_type, first, prehashed=prehashed, region=region)
                assert again == first


_EMAIL_PART = st.text(  # printable, so most of these are accepted
    st.characters(exclude_characters="@", exclude_categories=("C", "Z")), min_size=1, max_size=12
)
_EMAILS = st.one_of(
    st.emails(),
    st.emails().map(lambda e: f" {e.upper()}\t"),
    st.builds("{}@{}.{}".format, _EMAIL_PART, _EMAIL_PART, _EMAIL_PART),  # any Unicode
    TEXT,
)


@given(value=_EMAILS)
def test_email_output_is_lowercase_and_trimmed(value: str) -> None:
    out = _outcome(normalize_email, value)
    if out.startswith("rejected:"):
        return
    assert out == out.strip() == out.lower()
    assert out.count("@") == 1


_UUIDS = st.uuids().map(str)
_DEVICE_IDS = st.one_of(
    _UUIDS,
    _UUIDS.map(str.upper),
    _UUIDS.map(lambda u: u.replace("-", "")),
    _UUIDS.map(lambda u: f"  {u.upper()}\n"),
    TEXT,
)


@given(value=_DEVICE_IDS)
def test_device_ids_are_canonical(value: str) -> None:
    out = _outcome(normalize_device_id, value)
    if out.startswith("rejected:"):
        return
    assert CANONICAL_UUID.fullmatch(out)
    assert out != "00000000-0000-0000-0000-000000000000"


@st.composite
def _phones(draw: st.DrawFn) -> str:
    """Phone-looking text: digits of a plausible length, a prefix, formatting between."""
    prefix = draw(st.sampled_from(["", "", "+", "00", "011", "1", "0", "+44 (0)", "(+"]))
    digits = draw(st.text("0123456789", min_size=1, max_size=16))
    seps = draw(st.lists(st.sampled_from(["", "", " ", "-", ".", "(", ")", " - "]), min_size=16))
    body = "".join(d + s for d, s in zip(digits, seps, strict=False))
    return draw(st.sampled_from(["", " ", "\t"])) + prefix + body


@SLOW
@given(data=st.data(), region=REGIONS)
def test_hasher_equals_hash_of_normalize(data: st.DataObject, region: str | None) -> None:
    """Both phone paths (fast shapes and phonenumbers) and every other type, same answers."""
    hasher = Hasher(region)
    cases = [
        (E, data.draw(_EMAILS)),
        (P, data.draw(_phones())),
        (P, data.draw(st.one_of(_phones(), TEXT))),
        (A, data.draw(_DEVICE_IDS)),
        (G, data.draw(_DEVICE_IDS)),
    ]
    for id_type, value in cases:
        want = _outcome(normalize, id_type, value, region=region)
        got = _outcome(hasher.digest, id_type, value)
        if want.startswith("rejected:"):
            assert got == want, (id_type, value)
        else:
            assert got == hash_normalized(want), (id_type, value)
            assert hasher.normalize(id_type, value) == want


# --- the phone fast path against phonenumbers --------------------------------------------------

_FORMATTING = str.maketrans("", "", " -.()")


def _phonenumbers_says(value: str, region: str | None) -> str:
    """An independent statement of the contract: trim, read a leading 00 as '+', then
    phonenumbers parse + is_valid_number + format E.164."""
    s = value.strip()
    if not s:
        return "rejected:empty"
    compact = s.translate(_FORMATTING)
    if compact.startswith("00"):
        s = "+" + compact[2:]
    try:
        number = phonenumbers.parse(s, region)
    except phonenumbers.NumberParseException as error:
        no_plus = re.search(r"[+\uff0b\d]", s)
        if (
            error.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE
            and region is None
            and (no_plus is None or no_plus.group() not in "+\uff0b")
        ):
            return "rejected:phone_no_region"
        return "rejected:phone_invalid"
    if not phonenumbers.is_valid_number(number):
        return "rejected:phone_invalid"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@pytest.mark.timeout(60)
def test_phone_fast_path_matches_phonenumbers() -> None:
    corpus = phone_corpus(100_000, seed=20_240_601)
    assert len({region for _, region in corpus}) > 40
    hashers: dict[str | None, Hasher] = {}
    mismatches = []
    valid = 0
    for index, (value, region) in enumerate(corpus):
        hasher = hashers.get(region) or hashers.setdefault(region, Hasher(region))
        want = _phonenumbers_says(value, region)
        valid += want[0] == "+"
        got = _outcome(hasher.normalize_phone, value)
        if got != want:
            mismatches.append((value, region, got, want))
        if index % 5 == 0:  # the plain function too (it is the fast path's fallback)
            assert _outcome(normalize_phone, value, region) == want, (value, region)
    assert mismatches == []
    assert 0.3 < valid / len(corpus) < 0.7  # the corpus really mixes valid and invalid numbers
    handed_over = sum(h.cache_info()[0] + h.cache_info()[1] for h in hashers.values())
    assert handed_over < 0.25 * len(corpus)  # and the fast path really answered most of it


def test_corpus_is_deterministic() -> None:
    assert phone_corpus(500, seed=3) == phone_corpus(500, seed=3)
    assert phone_corpus(500, seed=3) != phone_corpus(500, seed=4)


def test_phone_verdicts_are_cached_for_the_slow_shapes() -> None:
    hasher = Hasher("US", cache_size=10)
    for _ in range(3):
        assert hasher.normalize_phone("tel:+1-415-555-2671") == "+14155552671"
    hits, misses, maxsize, size = hasher.cache_info()
    assert (hits, misses, maxsize, size) == (2, 1, 10, 1)
    hasher.normalize_phone("+1 (415) 555-2671")  # the fast shape never reaches the cache
    assert hasher.cache_info()[:2] == (2, 1)
