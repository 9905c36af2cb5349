"""Properties of validation that must hold for any input, not just the examples."""

from __future__ import annotations

import unicodedata
from datetime import date, timedelta
from typing import Any, Literal

import orjson
import phonenumbers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumber, PhoneNumberType

from gateway import constants as c
from gateway import divisions, phones
from gateway import validation as v
from gateway.validation import Registration, ValidationFailed, validate

TODAY = date(2025, 5, 20)
SITES = ("HN-001", "HCM-002")
GROUPS = ("G01", "G04")

# No example database: these tests must not leave files in the work tree.
FAST = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Reference:
    def has_site(self, site_id: str) -> bool:
        return site_id in SITES

    def has_priority_group(self, code: str) -> bool:
        return code in GROUPS


def run(body: Any, channel: str | None) -> Registration | ValidationFailed:
    try:
        return validate(body, channel=channel, reference=Reference(), today=TODAY, min_age_years=18)
    except ValidationFailed as exc:
        return exc


# --- strategies -------------------------------------------------------------------

# Every category, surrogates included: orjson never produces them, but validate() must
# not care where its input came from.
odd_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
texts = st.one_of(
    odd_text,
    st.text(alphabet="\x00\t\n\u200b\u202e\ufeff aáàảãạăắâấđêếôốơớưứ0123456789+-.()@", max_size=30),
    st.sampled_from(["", " ", "0912345678", "cccd", "male", "web", "01", "1990-05-17"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: orjson parses huge integers into Python ints
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)
    ),
    max_leaves=8,
)

_WARDS = sorted(
    (ward.code, province.code)
    for province in divisions.iter_provinces()
    for ward in divisions.iter_wards(province.code)
)
_CCCD_PROVINCES = sorted(divisions.cccd_province_codes())

# Vietnamese letters, each in NFC; the strategy may decompose them.
_VI_LETTERS = (
    "aáàảãạăắằẳẵặâấầẩẫậbcdđeéèẻẽẹêếềểễệghiíìỉĩịklmnoóòỏõọôốồổỗộơớờởỡợpqrstuúùủũụưứừửữựvxyýỳỷỹỵ"
)
_word = st.text(alphabet=_VI_LETTERS, min_size=1, max_size=8).map(str.capitalize)


@st.composite
def names(draw: st.DrawFn) -> str:
    """A Vietnamese name as phones send it: NFC or NFD, odd spaces around and between."""
    form: Literal["NFC", "NFD"] = draw(st.sampled_from(("NFC", "NFD")))
    separator = draw(st.sampled_from([" ", "  ", "\u00a0"]))
    padding = draw(st.sampled_from(["", " ", "  "]))
    words = draw(st.lists(_word, min_size=2, max_size=4))
    return padding + separator.join(unicodedata.normalize(form, w) for w in words) + padding


@st.composite
def mobile_spellings(draw: st.DrawFn) -> str:
    # 09x with x in 0-8 followed by seven digits is a Vietnamese mobile range.
    national = (
        "9"
        + draw(st.sampled_from("012345678"))
        + draw(st.text("0123456789", min_size=7, max_size=7))
    )
    spelling = draw(
        st.sampled_from(
            [
                "0{n}",
                "+84{n}",
                "84{n}",
                "0084{n}",
                "+84 {a} {b} {c}",
                "(+84) {a}-{b}-{c}",
                "0{a}.{b}.{c}",
            ]
        )
    )
    return spelling.format(n=national, a=national[:3], b=national[3:6], c=national[6:])


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    max_born = TODAY.replace(year=TODAY.year - 18)
    born = draw(st.dates(min_value=TODAY.replace(year=TODAY.year - 119), max_value=max_born))
    gender = draw(st.sampled_from(c.GENDERS))
    id_type = draw(st.sampled_from(c.ID_DOCUMENT_TYPES))
    if id_type == "cccd":
        # The CCCD rules: province (3), 2*(centuries since 1900) + 1 for women, year (2).
        female = gender == "female" or (gender == "other" and draw(st.booleans()))
        digit = 2 * ((born.year - 1900) // 100) + int(female)
        serial = draw(st.text("0123456789", min_size=6, max_size=6))
        number = f"{draw(st.sampled_from(_CCCD_PROVINCES))}{digit}{born.year % 100:02d}{serial}"
    elif id_type == "cmnd":
        number = draw(st.text("0123456789", min_size=9, max_size=9))
    else:
        number = draw(st.from_regex(r"[A-Za-z][A-Za-z0-9]{5,8}", fullmatch=True))
    ward, province = draw(st.sampled_from(_WARDS))
    body: dict[str, Any] = {
        "full_name": draw(names()),
        "date_of_birth": born.isoformat(),
        "gender": gender,
        "phone": draw(mobile_spellings()),
        "id_document": {"type": id_type, "number": number},
        "address": {
            "province_code": province.lstrip("0") if draw(st.booleans()) else province,
            "ward_code": ward,
            "street": draw(st.sampled_from(["12 Phố Huế", "Thôn 3", "Ấp Bình Lợi, số 7"])),
        },
        "priority_group": draw(st.sampled_from(GROUPS)),
        "occupation": draw(st.sampled_from(["Giáo viên", "Nông dân", "Kỹ sư phần mềm"])),
        "site_id": draw(st.sampled_from(SITES)),
        "consent": True,
    }
    if draw(st.booleans()):
        body["email"] = draw(st.sampled_from(["an@example.vn", "Thu.Ha@Mail.EXAMPLE.com"]))
    if draw(st.booleans()):
        body["health_insurance_number"] = draw(
            st.from_regex(r"[A-Z]{2}[1-5][0-9]{12}", fullmatch=True)
        )
    if draw(st.booleans()):
        offset = draw(st.integers(0, c.PREFERRED_DATE_HORIZON_DAYS))
        body["preferred_date"] = (TODAY + timedelta(days=offset)).isoformat()
        body["preferred_session"] = draw(st.sampled_from(c.PREFERRED_SESSIONS))
    if draw(st.booleans()):
        questions = st.sampled_from(c.SCREENING_QUESTIONS)
        body["screening"] = draw(st.dictionaries(questions, st.booleans()))
    return body


def _assert_clean_failure(exc: ValidationFailed) -> None:
    assert exc.errors, "a failure names at least one field"
    assert all(err.code != "unprocessable" for err in exc.errors.values()), exc.errors
    for lang in ("en", "vi"):
        orjson.dumps(exc.render(lang))  # renderable and JSON-ready whatever the input


# --- properties --------------------------------------------------------------------


@FAST
@given(body=json_values, channel=st.one_of(st.none(), texts))
def test_any_json_value_is_a_registration_or_a_clean_validation_failure(
    body: Any, channel: str | None
) -> None:
    result = run(body, channel)
    if isinstance(result, ValidationFailed):
        _assert_clean_failure(result)


@FAST
@given(
    base=valid_bodies(),
    replacements=st.dictionaries(
        st.sampled_from(
            sorted(v._TOP_LEVEL_FIELDS)
            + [
                "id_document.type",
                "id_document.number",
                "address.province_code",
                "address.ward_code",
                "address.street",
                "screening.pregnant",
                "extra",
            ]
        ),
        json_values,
        min_size=1,
        max_size=4,
    ),
)
def test_valid_body_with_junk_in_some_fields_never_escapes_validation_failed(
    base: dict[str, Any], replacements: dict[str, Any]
) -> None:
    # Starting from a valid body reaches the deep checks (CCCD, wards) that random
    # bodies rarely get to.
    body = dict(base)
    for path, value in replacements.items():
        parent, _, leaf = path.rpartition(".")
        if parent:
            nested = body.get(parent)
            body[parent] = dict(nested) if isinstance(nested, dict) else {}
            body[parent][leaf] = value
        else:
            body[leaf] = value
    result = run(body, "web")
    if isinstance(result, ValidationFailed):
        _assert_clean_failure(result)


@FAST
@given(body=valid_bodies(), channel=st.sampled_from(c.CHANNELS))
def test_valid_registrations_are_nfc_and_round_trip_through_the_payload(
    body: dict[str, Any], channel: str
) -> None:
    result = run(body, channel)
    assert isinstance(result, Registration), getattr(result, "errors", None)
    # Names are stored NFC with whitespace collapsed, whatever form they arrived in.
    assert unicodedata.is_normalized("NFC", result.full_name)
    assert result.full_name == unicodedata.normalize("NFC", " ".join(body["full_name"].split()))
    wire = orjson.loads(orjson.dumps(result.to_payload()))
    assert Registration.from_payload(wire) == result
    # Normalisation is idempotent: validating the stored form gives the same record.
    again = run({k: val for k, val in wire.items() if k != "channel"} | {"consent": True}, channel)
    assert again == result
    assert again.fingerprint_material() == result.fingerprint_material()


@FAST
@given(text=odd_text)
def test_text_normalisation_is_nfc_and_idempotent(text: str) -> None:
    once = v.normalise_name(text)
    assert v.normalise_name(once) == once
    assert v.normalise_text(once) == once
    if not any(unicodedata.category(ch) == "Cs" for ch in text):
        assert unicodedata.is_normalized("NFC", once)


@FAST
@given(name=names())
def test_nfd_and_nfc_spellings_of_a_name_validate_alike(name: str) -> None:
    nfc = unicodedata.normalize("NFC", name)
    nfd = unicodedata.normalize("NFD", name)
    assert v.normalise_name(nfc) == v.normalise_name(nfd)


@settings(max_examples=300, deadline=None, database=None)
@given(national=st.text("0123456789", min_size=6, max_size=11).filter(lambda s: s[0] != "0"))
def test_fast_mobile_check_agrees_with_the_phone_library(national: str) -> None:
    number = PhoneNumber(country_code=84, national_number=int(national))
    library = phonenumbers.number_type(number) in (
        PhoneNumberType.MOBILE,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
    )
    assert phones._vn_mobile_classifier()(national) == library


@FAST
@given(spelling=mobile_spellings())
def test_every_mobile_spelling_gives_the_libraries_e164(spelling: str) -> None:
    e164, code = v.normalise_phone(spelling)
    expected = phonenumbers.format_number(
        phonenumbers.parse(spelling, "VN"), phonenumbers.PhoneNumberFormat.E164
    )
    assert (e164, code) == (expected, None)


@FAST
@given(payload=json_values)
def test_from_payload_raises_only_data_error(payload: Any) -> None:
    from gateway.exceptions import DataError

    try:
        Registration.from_payload(payload)
    except DataError:
        pass


@FAST
@given(
    base=valid_bodies(),
    path=st.sampled_from(
        [
            "full_name",
            "date_of_birth",
            "gender",
            "phone",
            "id_document",
            "id_document.type",
            "id_document.number",
            "email",
            "health_insurance_number",
            "address",
            "address.province_code",
            "address.ward_code",
            "address.street",
            "priority_group",
            "occupation",
            "site_id",
            "preferred_date",
            "preferred_session",
            "screening",
            "screening.pregnant",
            "channel",
        ]
    ),
    value=json_values,
)
def test_from_payload_on_a_damaged_stored_payload_raises_only_data_error(
    base: dict[str, Any], path: str, value: Any
) -> None:
    from gateway.exceptions import DataError

    registration = run(base, "web")
    assert isinstance(registration, Registration)
    payload = registration.to_payload()
    parent, _, leaf = path.rpartition(".")
    target = payload
    if parent:
        nested = payload.get(parent)
        target = payload[parent] = dict(nested) if isinstance(nested, dict) else {}
    target[leaf] = value
    try:
        Registration.from_payload(payload)
    except DataError:
        pass
