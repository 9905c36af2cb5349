"""Validation and normalisation of one registration: the field's rules, one by one."""

from __future__ import annotations

import copy
import logging
import re
import sys
import unicodedata
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import constants as c
from gateway import divisions, messages, phones
from gateway import validation as v
from gateway.exceptions import DataError
from gateway.validation import (
    FieldError,
    Registration,
    ValidationFailed,
    preferred_language,
    validate,
)

TODAY = date(2025, 5, 20)
SITE = "HN-BD-001"
GROUP = "G04"


class Reference:
    """The two questions validate() asks of the reference data, answered from sets."""

    def __init__(self, sites: set[str] | None = None, groups: set[str] | None = None) -> None:
        self.sites = {SITE} if sites is None else sites
        self.groups = {GROUP} if groups is None else groups

    def has_site(self, site_id: str) -> bool:
        return site_id in self.sites

    def has_priority_group(self, code: str) -> bool:
        return code in self.groups


# Hà Nội: "01" both before and after 2025, so its CCCD prefix is "001".
HANOI = "01"
HANOI_CCCD = "001"
HANOI_WARD = next(divisions.iter_wards(HANOI)).code
OTHER_PROVINCE = "79"  # Hồ Chí Minh City
OTHER_WARD = next(divisions.iter_wards(OTHER_PROVINCE)).code


def make_cccd(born: date, gender: str, province: str = HANOI_CCCD, serial: str = "012345") -> str:
    """A CCCD number built from the rules: province (3) + century/gender digit +
    two-digit birth year + 6-digit serial. The fourth digit is 2 * (centuries since
    1900) + 1 for women: 0/1 for 1900-1999, 2/3 for 2000-2099."""
    century_digit = 2 * ((born.year - 1900) // 100) + (1 if gender == "female" else 0)
    return f"{province}{century_digit}{born.year % 100:02d}{serial}"


BORN = date(1990, 5, 17)


def valid_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "full_name": "Nguyễn Văn An",
        "date_of_birth": BORN.isoformat(),
        "gender": "male",
        "phone": "0912345678",
        "id_document": {"type": "cccd", "number": make_cccd(BORN, "male")},
        "health_insurance_number": "DN4010123456789",
        "email": "an.nguyen@example.vn",
        "address": {"province_code": HANOI, "ward_code": HANOI_WARD, "street": "12 Phố Huế"},
        "priority_group": GROUP,
        "occupation": "Giáo viên",
        "site_id": SITE,
        "preferred_date": (TODAY + timedelta(days=7)).isoformat(),
        "preferred_session": "morning",
        "screening": {"fever_or_cough_14d": False, "pregnant": False},
        "consent": True,
    }
    body.update(overrides)
    return body


def run(body: Any, channel: str | None = "web", **kwargs: Any) -> Registration:
    return validate(
        body,
        channel=channel,
        reference=kwargs.pop("reference", Reference()),
        today=kwargs.pop("today", TODAY),
        min_age_years=kwargs.pop("min_age_years", c.DEFAULT_MIN_AGE_YEARS),
    )


def errors_of(body: Any, channel: str | None = "web", **kwargs: Any) -> dict[str, FieldError]:
    with pytest.raises(ValidationFailed) as caught:
        run(body, channel, **kwargs)
    return caught.value.errors


def codes_of(body: Any, channel: str | None = "web", **kwargs: Any) -> dict[str, str]:
    return {path: err.code for path, err in errors_of(body, channel, **kwargs).items()}


def with_id(number: Any, id_type: str = "cccd", **overrides: Any) -> dict[str, Any]:
    return valid_body(id_document={"type": id_type, "number": number}, **overrides)


# --- the happy path and normalisation ---------------------------------------------


def test_valid_body_becomes_a_normalised_registration() -> None:
    body = valid_body(
        full_name="  nguyễn   văn  an ",
        phone="091.234.5678",
        gender=" Male ",
        email="An.Nguyen@Example.VN",
        health_insurance_number="dn4-01-0123456789",
        address={
            "province_code": "1",
            "ward_code": HANOI_WARD.lstrip("0"),
            "street": " 12  Phố Huế ",
        },
        preferred_session="Morning",
    )
    reg = run(body, channel="App")
    assert reg.full_name == "nguyễn văn an"
    assert reg.phone == "+84912345678"
    assert reg.gender == "male"
    assert reg.email == "An.Nguyen@example.vn"  # the local part is the owner's business
    assert reg.health_insurance_number == "DN4010123456789"
    assert (reg.province_code, reg.ward_code, reg.street) == ("01", HANOI_WARD, "12 Phố Huế")
    assert reg.preferred_session == "morning"
    assert reg.channel == "app"
    assert reg.id_type == "cccd" and reg.id_number == make_cccd(BORN, "male")
    assert reg.screening == {"fever_or_cough_14d": False, "pregnant": False}


def test_optional_fields_may_be_absent_null_or_blank() -> None:
    body = valid_body()
    for key in ("health_insurance_number", "preferred_date", "preferred_session", "screening"):
        del body[key]
    body["email"] = "   "
    reg = run(body)
    assert reg.email is None and reg.health_insurance_number is None
    assert reg.preferred_date is None and reg.preferred_session is None and reg.screening is None
    assert run(valid_body(email=None, screening=None, preferred_date="")) == run(
        valid_body(email=None, screening=None, preferred_date=None)
    )


def test_nfd_and_nfc_names_are_the_same_person() -> None:
    nfc = valid_body(full_name=unicodedata.normalize("NFC", "Trần Thị Ngọc Ánh"))
    nfd = valid_body(full_name=unicodedata.normalize("NFD", "Trần Thị Ngọc Ánh"))
    assert nfc["full_name"] != nfd["full_name"]  # different bytes on the wire
    a, b = run(nfc), run(nfd)
    assert a == b
    assert a.fingerprint_material() == b.fingerprint_material()
    assert unicodedata.is_normalized("NFC", b.full_name)


def test_nfd_street_and_occupation_are_stored_nfc() -> None:
    street, job = "Ngõ 5 Đường Láng", "Kỹ sư"
    reg = run(
        valid_body(
            occupation=unicodedata.normalize("NFD", job),
            address={
                "province_code": HANOI,
                "ward_code": HANOI_WARD,
                "street": unicodedata.normalize("NFD", street),
            },
        )
    )
    assert (reg.street, reg.occupation) == (street, job)


def test_smart_apostrophes_in_names_fold_to_one_spelling() -> None:
    assert run(valid_body(full_name="Mary O’Brien")).full_name == "Mary O'Brien"
    assert run(valid_body(full_name="Mary O'Brien")).full_name == "Mary O'Brien"


@pytest.mark.parametrize(
    "name",
    ["Nguyễn Thị Minh Khai", "Đặng Thái Sơn", "Jean-Pierre O'Neil Jr.", "Иван Петров", "李小龍"],
)
def test_names_in_any_script_are_accepted(name: str) -> None:
    assert run(valid_body(full_name=name)).full_name == name


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("Nguyen Van 2", "invalid_characters"),
        ("R2-D2", "invalid_characters"),
        ("An@home", "invalid_characters"),
        ("-An", "invalid_characters"),
        ("A", "too_short"),
        ("A" * 101, "too_long"),
        ("   ", "required"),
        ("", "required"),
    ],
)
def test_bad_names_are_rejected(name: str, code: str) -> None:
    assert codes_of(valid_body(full_name=name)) == {"full_name": code}


def test_nul_in_name_is_rejected() -> None:
    assert codes_of(valid_body(full_name="Nguyễn\x00Văn An")) == {"full_name": "control_character"}


@pytest.mark.parametrize("char", ["\x00", "\x07", "\t", "\n", "\x1f", "\x7f", "\x85"])
@pytest.mark.parametrize(
    ("path", "make"),
    [
        ("full_name", lambda s: valid_body(full_name=f"Nguyễn{s}An")),
        ("occupation", lambda s: valid_body(occupation=f"Giáo{s}viên")),
        ("email", lambda s: valid_body(email=f"an{s}@example.vn")),
        ("phone", lambda s: valid_body(phone=f"0912{s}345678")),
        ("site_id", lambda s: valid_body(site_id=f"{SITE}{s}")),
        ("id_document.number", lambda s: with_id(f"00109{s}0123456")),
        (
            "address.street",
            lambda s: valid_body(
                address={"province_code": HANOI, "ward_code": HANOI_WARD, "street": f"12{s}Huế"}
            ),
        ),
    ],
)
def test_control_characters_are_rejected_in_every_string_field(
    char: str, path: str, make: Any
) -> None:
    assert codes_of(make(char)) == {path: "control_character"}


@pytest.mark.parametrize("char", ["\u200b", "\u00ad", "\ufeff", "\u202e"])
def test_invisible_format_characters_are_rejected(char: str) -> None:
    # Zero-width space, soft hyphen, BOM, right-to-left override: invisible, so they
    # would make two equal-looking names differ.
    assert codes_of(valid_body(occupation=f"Kỹ{char}sư")) == {"occupation": "control_character"}


def test_lone_surrogate_is_rejected() -> None:
    assert codes_of(valid_body(full_name="Nguy\ud800n An")) == {"full_name": "invalid_unicode"}


def test_overlong_strings_are_rejected_before_any_work() -> None:
    huge = "a" * 100_000
    assert codes_of(valid_body(occupation=huge))["occupation"] == "too_long"
    assert codes_of(valid_body(phone=huge))["phone"] == "too_long"
    assert codes_of(valid_body(occupation="x" * 101))["occupation"] == "too_long"
    # The limit named in the message is the real one, whichever check caught it.
    for name in ("A" * 101, "A" * 10_000):
        assert errors_of(valid_body(full_name=name)) == {
            "full_name": FieldError("too_long", {"max": v.NAME_MAX})
        }


# --- phone --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "0912345678",
        "+84 912 345 678",
        "84912345678",
        "(+84) 912-345-678",
        "0084912345678",
        "091.234.5678",
        "+84912345678",
        " 0912 345 678 ",
        "+84 (0) 912 345 678",
    ],
)
def test_phone_spellings_normalise_to_one_e164(spelling: str) -> None:
    assert run(valid_body(phone=spelling)).phone == "+84912345678"


@pytest.mark.parametrize(
    ("phone", "code"),
    [
        ("024 3826 1234", "phone_not_mobile"),  # Hà Nội landline: cannot receive SMS
        ("1900 1234", "phone_not_mobile"),  # premium-rate service number
        ("+1 650 253 0000", "phone_not_vietnamese"),
        ("+44 20 7946 0958", "phone_not_vietnamese"),
        ("0168 123 4567", "invalid_phone"),  # 11-digit mobile numbers were retired in 2018
        ("0912 ABC 678", "invalid_phone"),  # the library would read letters as digits
        ("0912345678 ext 12", "invalid_phone"),
        ("12345", "invalid_phone"),
        ("+84 912 345", "invalid_phone"),
        ("０９１２３４５６７８", "invalid_phone"),  # full-width digits
    ],
)
def test_bad_phones_are_rejected_with_a_precise_code(phone: str, code: str) -> None:
    assert codes_of(valid_body(phone=phone)) == {"phone": code}


@pytest.mark.parametrize("number", [912345678, 84912345678, 9.12e8, True])
def test_numeric_phone_is_rejected_naming_the_field(number: Any) -> None:
    errors = errors_of(valid_body(phone=number))
    assert errors == {"phone": FieldError("wrong_type", {"expected": "string"})}


# --- identity documents -------------------------------------------------------------


def test_numeric_identity_number_is_rejected_naming_the_field() -> None:
    # 001090012345 as a JSON number arrives as 1090012345: its leading zeros are gone.
    errors = errors_of(with_id(int(make_cccd(BORN, "male"))))
    assert errors == {"id_document.number": FieldError("wrong_type", {"expected": "string"})}


def test_identity_number_separators_are_stripped() -> None:
    number = make_cccd(BORN, "male")
    spaced = f"{number[:3]} {number[3:6]}.{number[6:9]}-{number[9:]}"
    assert run(with_id(spaced)).id_number == number


def test_cccd_century_digit_checked_against_birth_date() -> None:
    born_2001 = date(2001, 3, 4)  # 24 on TODAY
    # Born 2001 (digit 2 for a man) is accepted...
    ok = with_id(make_cccd(born_2001, "male"), date_of_birth=born_2001.isoformat())
    assert run(ok).id_number[3] == "2"
    # ...but the same number with the 1900s digit (0) contradicts the date of birth.
    number = make_cccd(born_2001, "male")
    wrong_century = number[:3] + "0" + number[4:]
    body = with_id(wrong_century, date_of_birth=born_2001.isoformat())
    assert codes_of(body) == {"id_document.number": "cccd_century_mismatch"}


def test_cccd_gender_digit_checked_against_gender() -> None:
    woman = make_cccd(BORN, "female")
    assert woman[3] == "1"
    assert run(with_id(woman, gender="female")).id_number == woman
    assert codes_of(with_id(woman, gender="male")) == {"id_document.number": "cccd_gender_mismatch"}
    assert codes_of(with_id(make_cccd(BORN, "male"), gender="female")) == {
        "id_document.number": "cccd_gender_mismatch"
    }


def test_cccd_gender_other_skips_only_the_gender_part() -> None:
    assert run(with_id(make_cccd(BORN, "female"), gender="other")).gender == "other"
    number = make_cccd(BORN, "female")
    assert codes_of(with_id(number[:3] + "3" + number[4:], gender="other")) == {
        "id_document.number": "cccd_century_mismatch"
    }


def test_cccd_year_digits_checked_against_birth_year() -> None:
    number = make_cccd(BORN, "male")  # ...090... for 1990
    wrong_year = number[:4] + "91" + number[6:]
    assert codes_of(with_id(wrong_year)) == {"id_document.number": "cccd_year_mismatch"}


def test_cccd_first_three_digits_must_be_a_province_code() -> None:
    legacy = divisions.cccd_province_codes()
    unknown = next(f"{n:03d}" for n in range(1, 1000) if f"{n:03d}" not in legacy)
    number = make_cccd(BORN, "male", province=unknown)
    assert codes_of(with_id(number)) == {"id_document.number": "cccd_province_unknown"}
    # Provinces merged in 2025 still start CCCD numbers: Hà Giang (02) is now part of
    # Tuyên Quang but "002" remains a valid prefix.
    assert "002" in legacy and not divisions.province_exists("02")
    assert run(with_id(make_cccd(BORN, "male", province="002"))).id_number.startswith("002")


def test_cccd_checks_wait_for_a_valid_birth_date() -> None:
    # An unparseable birth date is one error, not two.
    assert codes_of(with_id(make_cccd(BORN, "male"), date_of_birth="1990-02-30")) == {
        "date_of_birth": "invalid_date"
    }


@pytest.mark.parametrize(
    ("id_type", "number", "expected"),
    [
        ("cmnd", "012345678", "012345678"),
        ("cmnd", "012 345 678", "012345678"),
        ("passport", "c1234567", "C1234567"),
        ("passport", "B 123 4567", "B1234567"),
        ("passport", "X12345", "X12345"),
        (" CCCD ", make_cccd(BORN, "male"), make_cccd(BORN, "male")),
    ],
)
def test_identity_document_kinds_are_normalised(id_type: str, number: str, expected: str) -> None:
    reg = run(with_id(number, id_type))
    assert reg.id_number == expected and reg.id_type == id_type.strip().lower()


@pytest.mark.parametrize(
    ("id_type", "number", "code"),
    [
        ("cccd", "00109012345", "invalid_cccd"),  # 11 digits
        ("cccd", "0010901234567", "invalid_cccd"),
        ("cccd", "00109012345a", "invalid_cccd"),
        ("cccd", "٠٠١٠٩٠٠١٢٣٤٥", "invalid_cccd"),  # Arabic-Indic digits
        ("cmnd", "12345678", "invalid_cmnd"),
        ("cmnd", "1234567890", "invalid_cmnd"),
        ("passport", "1234567", "invalid_passport"),  # must start with a letter
        ("passport", "C12", "invalid_passport"),
        ("passport", "C1234567890", "invalid_passport"),
        ("passport", "ſ1234567", "invalid_passport"),  # upper-cases to ASCII "S"
    ],
)
def test_identity_numbers_must_match_their_kind(id_type: str, number: str, code: str) -> None:
    assert codes_of(with_id(number, id_type)) == {"id_document.number": code}


def test_identity_document_shape_is_checked() -> None:
    assert codes_of(valid_body(id_document="001090012345")) == {"id_document": "wrong_type"}
    assert codes_of(valid_body(id_document={"type": "visa", "number": "X1"})) == {
        "id_document.type": "invalid_choice"
    }
    assert codes_of(valid_body(id_document={"number": "012345678"})) == {
        "id_document.type": "required"
    }
    del_body = valid_body()
    del del_body["id_document"]
    assert codes_of(del_body) == {"id_document": "required"}


# --- other fields -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("DN4010123456789", "DN4010123456789"),
        ("gd 4 79 7912345678", "GD4797912345678"),
        ("7912345678", "7912345678"),
    ],
)
def test_health_insurance_accepts_card_code_or_social_insurance_number(
    value: str, expected: str
) -> None:
    assert run(valid_body(health_insurance_number=value)).health_insurance_number == expected


@pytest.mark.parametrize(
    "value", ["DN6010123456789", "D14010123456789", "791234567", "ĐN4010123456789"]
)
def test_bad_health_insurance_numbers_are_rejected(value: str) -> None:
    assert codes_of(valid_body(health_insurance_number=value)) == {
        "health_insurance_number": "invalid_health_insurance_number"
    }


@pytest.mark.parametrize(
    "email",
    [
        "no-at.example.vn",
        "a@@example.vn",
        "@example.vn",
        "an@localhost",
        "a n@example.vn",
        "an@example..vn",
        "an@.example.vn",
        "x" * 250 + "@e.vn",
    ],
)
def test_bad_emails_are_rejected(email: str) -> None:
    assert codes_of(valid_body(email=email)) == {"email": "invalid_email"}


def test_date_of_birth_rules() -> None:
    def dob(value: Any, **kwargs: Any) -> dict[str, str]:
        # A passport avoids the CCCD cross-checks so each case shows one error.
        return codes_of(with_id("C1234567", "passport", date_of_birth=value), **kwargs)

    assert dob("17/05/1990") == {"date_of_birth": "invalid_date"}
    assert dob("1990-5-17") == {"date_of_birth": "invalid_date"}
    assert dob("19900517") == {"date_of_birth": "invalid_date"}
    assert dob("2001-02-29") == {"date_of_birth": "invalid_date"}
    assert dob("1990-13-01") == {"date_of_birth": "invalid_date"}
    assert dob((TODAY + timedelta(days=1)).isoformat()) == {"date_of_birth": "date_in_future"}
    assert dob("1900-01-01") == {"date_of_birth": "too_old"}
    assert dob(19900517) == {"date_of_birth": "wrong_type"}
    # Turns 18 tomorrow: too young today, accepted tomorrow.
    born = TODAY.replace(year=TODAY.year - 18) + timedelta(days=1)
    assert dob(born.isoformat()) == {"date_of_birth": "too_young"}
    body = with_id("C1234567", "passport", date_of_birth=born.isoformat())
    assert run(body, today=TODAY + timedelta(days=1)).date_of_birth == born
    # The minimum age is configuration.
    assert run(body, min_age_years=12).date_of_birth == born


def test_too_young_message_names_the_configured_age() -> None:
    body = with_id("C1234567", "passport", date_of_birth="2010-01-01")
    with pytest.raises(ValidationFailed) as caught:
        run(body, min_age_years=16)
    assert "16" in caught.value.render("en")["fields"]["date_of_birth"]["message"]


def test_preferred_date_must_be_within_the_booking_window() -> None:
    assert codes_of(valid_body(preferred_date=(TODAY - timedelta(days=1)).isoformat())) == {
        "preferred_date": "date_in_past"
    }
    too_far = TODAY + timedelta(days=c.PREFERRED_DATE_HORIZON_DAYS + 1)
    assert codes_of(valid_body(preferred_date=too_far.isoformat())) == {
        "preferred_date": "date_too_far"
    }
    assert run(valid_body(preferred_date=TODAY.isoformat())).preferred_date == TODAY


@pytest.mark.parametrize(
    ("value", "code"),
    [(False, "consent_required"), ("true", "wrong_type"), (1, "wrong_type"), (None, "required")],
)
def test_consent_must_be_json_true(value: Any, code: str) -> None:
    assert codes_of(valid_body(consent=value)) == {"consent": code}


def test_booleans_are_not_numbers_or_strings() -> None:
    errors = codes_of(valid_body(full_name=True, phone=False, gender=True, site_id=True))
    assert errors == {
        "full_name": "wrong_type",
        "phone": "wrong_type",
        "gender": "wrong_type",
        "site_id": "wrong_type",
    }


def test_choices_are_checked() -> None:
    assert codes_of(valid_body(gender="m", preferred_session="night")) == {
        "gender": "invalid_choice",
        "preferred_session": "invalid_choice",
    }
    err = errors_of(valid_body(gender="m"))["gender"]
    assert list(err.params["allowed"]) == list(c.GENDERS)


def test_screening_answers_are_known_questions_with_boolean_answers() -> None:
    codes = codes_of(valid_body(screening={"pregnant": "no", "favourite_colour": True}))
    assert codes == {
        "screening.pregnant": "wrong_type",
        "screening.favourite_colour": "unknown_field",
    }
    assert codes_of(valid_body(screening=[True])) == {"screening": "wrong_type"}
    # Order does not matter and no answers equal no screening.
    a = run(valid_body(screening={"pregnant": True, "fever_or_cough_14d": False}))
    b = run(valid_body(screening={"fever_or_cough_14d": False, "pregnant": True}))
    assert a.fingerprint_material() == b.fingerprint_material()
    assert run(valid_body(screening={})).screening is None


# --- address ------------------------------------------------------------------------


def test_ward_not_in_province_is_rejected() -> None:
    body = valid_body(address={"province_code": HANOI, "ward_code": OTHER_WARD, "street": "1 A"})
    assert divisions.ward_in_province(OTHER_WARD, HANOI) is False
    assert codes_of(body) == {"address.ward_code": "ward_not_in_province"}


def test_unknown_province_and_ward_codes_are_rejected() -> None:
    # "02" was Hà Giang until 2025; it no longer exists as a province.
    body = valid_body(address={"province_code": "02", "ward_code": "99999", "street": "1 A"})
    assert codes_of(body) == {
        "address.province_code": "unknown_province",
        "address.ward_code": "unknown_ward",
    }


@pytest.mark.parametrize("code", [1, "1a", "001", "+1", "１"])
def test_division_codes_must_be_short_digit_strings(code: Any) -> None:
    body = valid_body(address={"province_code": code, "ward_code": HANOI_WARD, "street": "1 A"})
    expected = "wrong_type" if isinstance(code, int) else "invalid_code"
    assert codes_of(body) == {"address.province_code": expected}


def test_address_fields_are_required() -> None:
    assert codes_of(valid_body(address={})) == {
        "address.province_code": "required",
        "address.ward_code": "required",
        "address.street": "required",
    }
    assert codes_of(valid_body(address=["01", HANOI_WARD])) == {"address": "wrong_type"}


# --- reference data, channel, unknown fields, body ----------------------------------


def test_unknown_site_and_priority_group_are_rejected() -> None:
    codes = codes_of(valid_body(site_id="NOWHERE", priority_group="G99"))
    assert codes == {"site_id": "unknown_site", "priority_group": "unknown_priority_group"}
    assert run(valid_body(), reference=Reference(sites={SITE}, groups={GROUP})).site_id == SITE


def test_channel_header_wins_over_body_field() -> None:
    assert run(valid_body(channel="web"), channel="app").channel == "app"
    assert run(valid_body(channel="app"), channel=None).channel == "app"
    assert run(valid_body(channel="web"), channel="").channel == "web"
    assert codes_of(valid_body(), channel=None) == {"channel": "required"}
    assert codes_of(valid_body(channel="web"), channel="sms") == {"channel": "invalid_choice"}


@pytest.mark.parametrize("value", ["sms", 1, True, ["web"]])
def test_a_wrong_body_channel_is_refused_even_when_the_header_names_one(value: Any) -> None:
    assert set(codes_of(valid_body(channel=value), channel="web")) == {"channel"}


def test_unknown_fields_are_rejected_by_name() -> None:
    body = valid_body(nickname="Bé", id_document={"type": "cmnd", "number": "012345678", "x": 1})
    assert codes_of(body) == {"nickname": "unknown_field", "id_document.x": "unknown_field"}


def test_client_chosen_field_names_are_escaped_and_cut() -> None:
    codes = codes_of(valid_body(**{"a\x00b" + "z" * 200: 1}))
    (path,) = codes
    assert "\x00" not in path and len(path) <= 64


def test_a_flood_of_unknown_fields_is_capped() -> None:
    body = valid_body(**{f"junk{i}": i for i in range(500)})
    errors = errors_of(body)
    assert len(errors) == v.MAX_UNKNOWN_FIELDS_REPORTED + 1
    assert errors["body"] == FieldError("too_many_fields", {"max": v.MAX_UNKNOWN_FIELDS_REPORTED})


@pytest.mark.parametrize("body", [[], None, "body", 42, 4.2, True, [valid_body()]])
def test_body_must_be_a_json_object(body: Any) -> None:
    assert errors_of(body) == {"body": FieldError("wrong_type", {"expected": "object"})}


def test_all_field_errors_reported_at_once() -> None:
    body = {
        "full_name": "N",
        "date_of_birth": "yesterday",
        "gender": "x",
        "phone": 912345678,
        "id_document": {"type": "cccd", "number": "12"},
        "email": "nope",
        "address": {"province_code": "02", "ward_code": "1", "street": ""},
        "priority_group": "G99",
        "site_id": "S0",
        "preferred_session": "night",
        "consent": False,
        "surprise": 1,
    }
    assert codes_of(body, channel=None) == {
        "full_name": "too_short",
        "date_of_birth": "invalid_date",
        "gender": "invalid_choice",
        "phone": "wrong_type",
        "id_document.number": "invalid_cccd",
        "email": "invalid_email",
        "address.province_code": "unknown_province",
        "address.ward_code": "unknown_ward",
        "address.street": "required",
        "priority_group": "unknown_priority_group",
        "site_id": "unknown_site",
        "occupation": "required",
        "preferred_session": "invalid_choice",
        "consent": "consent_required",
        "channel": "required",
        "surprise": "unknown_field",
    }


def test_validation_bugs_become_a_field_error_and_a_log_line_without_data(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    phone = "0912345678"

    def broken(raw: str) -> tuple[str | None, str | None]:
        raise ValueError(f"cannot handle {raw}")

    monkeypatch.setattr(v, "normalise_phone", broken)
    with caplog.at_level(logging.ERROR, logger="gateway.validation"):
        assert errors_of(valid_body(phone=phone)) == {"body": FieldError("unprocessable")}
    assert caplog.records and all(phone not in r.getMessage() for r in caplog.records)


# --- messages and languages ---------------------------------------------------------


def test_vietnamese_messages_when_accept_language_vi() -> None:
    with pytest.raises(ValidationFailed) as caught:
        run(valid_body(phone="024 3826 1234", full_name="A"))
    lang = preferred_language("vi-VN,vi;q=0.9,en-US;q=0.8,en;q=0.7")
    assert lang == "vi"
    rendered = caught.value.render(lang)
    assert rendered["error"] == "invalid_fields"
    assert rendered["message"] == "Đơn đăng ký có 2 trường không hợp lệ."
    assert rendered["fields"]["phone"] == {
        "code": "phone_not_mobile",
        "message": "Phải là số di động: thông báo được gửi qua tin nhắn SMS.",
    }
    assert rendered["fields"]["full_name"]["message"] == "Phải có ít nhất 2 ký tự."
    english = caught.value.render(preferred_language("en-US,en;q=0.9"))
    assert english["fields"]["full_name"]["message"] == "Must be at least 2 characters long."
    orjson.dumps(rendered)  # JSON-ready


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        (None, "en"),
        ("", "en"),
        ("vi", "vi"),
        ("vi-VN", "vi"),
        ("VI-vn,en;q=0.5", "vi"),
        ("en-US,en;q=0.9,vi;q=0.8", "en"),
        ("en;q=0.5,vi;q=0.6", "vi"),
        ("fr-FR,fr;q=0.9,vi;q=0.5", "vi"),
        ("fr-FR", "en"),
        ("*", "en"),
        ("en,vi", "en"),
        ("vi,en", "vi"),
        ("vi;q=0", "en"),
        ("vi;q=nan,en;q=0.1", "en"),
        ("vi;q=abc", "en"),
        (";;;,,,q=", "en"),
        ("vi;q=0.8," * 1000, "vi"),
    ],
)
def test_preferred_language(header: str | None, lang: str) -> None:
    assert preferred_language(header) == lang


def test_errors_never_echo_identity_number_or_phone() -> None:
    number = make_cccd(BORN, "female")  # gender mismatch with the body's "male"
    body = valid_body(phone="0243 826 1234", id_document={"type": "cccd", "number": number})
    with pytest.raises(ValidationFailed) as caught:
        run(body)
    for lang in messages.LANGUAGES:
        text = orjson.dumps(caught.value.render(lang)).decode()
        assert number not in text and "38261234" not in text
    assert number not in str(caught.value) and "38261234" not in str(caught.value)


# Every module that emits field error codes: validation and the phone normaliser.
_SOURCE = "".join(
    Path(module.__file__).read_text(encoding="utf-8") for module in (v, phones)  # type: ignore[arg-type]
)
_EMITTED = (
    set(re.findall(r'FieldError\(\s*"([a-z_]+)"', _SOURCE))
    | set(re.findall(r'return None, "([a-z_]+)"', _SOURCE))
    | set(re.findall(r'return "(cccd_[a-z_]+)"', _SOURCE))
)
_EMITTED |= {f"invalid_{kind}" for kind in c.ID_DOCUMENT_TYPES}


@pytest.mark.parametrize("code", sorted(_EMITTED))
def test_every_error_code_has_english_and_vietnamese_text(code: str) -> None:
    assert messages.has_code(code), code
    english, vietnamese = messages.render(code, {}, "en"), messages.render(code, {}, "vi")
    assert english and vietnamese and english != vietnamese


def test_the_code_scan_found_the_codes() -> None:
    # Guards the scan above: if the regexes stopped matching, that test would pass empty.
    assert {"required", "wrong_type", "invalid_phone", "cccd_century_mismatch"} <= _EMITTED
    assert len(_EMITTED) >= 30


def test_messages_render_never_fails() -> None:
    assert messages.render("no_such_code", {}, "vi") == "Giá trị không hợp lệ."
    assert messages.render("too_long", {}, "xx") == "Must be at most  characters long."
    assert "true hoặc false" in messages.render("wrong_type", {"expected": "boolean"}, "vi")
    assert "male, female" in messages.render("invalid_choice", {"allowed": c.GENDERS}, "en")


# --- to_payload / from_payload / fingerprint ----------------------------------------


def test_from_payload_round_trip() -> None:
    reg = run(valid_body(email="An@Example.VN"), channel="app")
    payload = reg.to_payload()
    assert payload["id_document"] == {"type": "cccd", "number": reg.id_number}
    assert payload["address"]["ward_code"] == HANOI_WARD
    assert payload["date_of_birth"] == BORN.isoformat() and payload["channel"] == "app"
    wire = orjson.loads(orjson.dumps(payload))  # what the writer reads back from Redis
    assert Registration.from_payload(wire) == reg
    minimal = run(valid_body(email=None, screening=None, preferred_date=None))
    assert Registration.from_payload(orjson.loads(orjson.dumps(minimal.to_payload()))) == minimal


def _payload() -> dict[str, Any]:
    return run(valid_body()).to_payload()


def _mutated(path: str, value: Any) -> dict[str, Any]:
    payload = copy.deepcopy(_payload())
    target = payload
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return payload


_DELETE = object()


@pytest.mark.parametrize(
    "junk",
    [
        None,
        [],
        "payload",
        {},
        {"full_name": "x"},
        _mutated("full_name", _DELETE),
        _mutated("full_name", 42),
        _mutated("full_name", "Nguyễn\x00An"),
        _mutated("full_name", unicodedata.normalize("NFD", "Nguyễn An")),
        _mutated("full_name", "  two  spaces "),
        _mutated("date_of_birth", "1990-02-30"),
        _mutated("date_of_birth", 19900517),
        _mutated("date_of_birth", None),
        _mutated("gender", "m"),
        _mutated("phone", "0912345678"),
        _mutated("phone", 84912345678),
        _mutated("id_document", "cccd"),
        _mutated("id_document.type", "visa"),
        _mutated("id_document.type", ["cccd"]),
        _mutated("id_document.number", 1090012345),
        _mutated("id_document.number", "12"),
        _mutated("address", None),
        _mutated("address.province_code", "1"),
        _mutated("address.ward_code", 4),
        _mutated("address.street", ""),
        _mutated("email", "not-an-email"),
        _mutated("email", "a@EXAMPLE.vn"),
        _mutated("health_insurance_number", "123"),
        _mutated("preferred_date", "soon"),
        _mutated("preferred_session", "night"),
        _mutated("screening", {"pregnant": 1}),
        _mutated("screening", {"mood": True}),
        _mutated("screening", [True]),
        _mutated("channel", "sms"),
        _mutated("channel", _DELETE),
        _mutated("site_id", "x" * 1000),
        _mutated("priority_group", {"code": GROUP}),
    ],
)
def test_from_payload_raises_data_error_on_junk(junk: Any) -> None:
    with pytest.raises(DataError) as caught:
        Registration.from_payload(junk)
    assert "0912345678" not in str(caught.value)


def test_from_payload_ignores_keys_it_does_not_know() -> None:
    payload = _payload() | {"added_in_a_later_version": 1}
    assert Registration.from_payload(payload) == run(valid_body())


def test_fingerprint_ignores_channel_but_not_content() -> None:
    web, app = run(valid_body(), channel="web"), run(valid_body(), channel="app")
    assert web != app
    assert web.fingerprint_material() == app.fingerprint_material()
    other = run(valid_body(occupation="Bác sĩ"), channel="web")
    assert other.fingerprint_material() != web.fingerprint_material()
    assert b"channel" not in web.fingerprint_material()
    assert orjson.loads(web.fingerprint_material())["id_document"]["number"] == web.id_number


def test_spellings_of_one_person_fingerprint_alike() -> None:
    a = run(valid_body(phone="0912345678", full_name="Nguyễn Văn An"))
    b = run(
        valid_body(
            phone="+84 912 345 678",
            full_name=unicodedata.normalize("NFD", " Nguyễn  Văn An "),
            id_document={"type": "CCCD", "number": " ".join(make_cccd(BORN, "male"))},
            address={"province_code": "1", "ward_code": HANOI_WARD, "street": "12  Phố Huế"},
            email="an.nguyen@EXAMPLE.vn",
        )
    )
    assert a.fingerprint_material() == b.fingerprint_material()


# --- divisions ----------------------------------------------------------------------


def test_divisions_come_from_the_packages() -> None:
    provinces = list(divisions.iter_provinces())
    assert len(provinces) == 34  # after the 2025 reorganisation
    assert divisions.province_name("01") == "Thành phố Hà Nội"
    assert all(re.fullmatch(r"[0-9]{2}", p.code) for p in provinces)
    wards = list(divisions.iter_wards("79"))
    assert wards and all(re.fullmatch(r"[0-9]{5}", w.code) for w in wards)
    assert all(divisions.ward_in_province(w.code, "79") for w in wards)
    assert divisions.ward_in_province("99999", "79") is None
    assert divisions.ward_exists(wards[0].code) and not divisions.ward_exists("99999")
    assert list(divisions.iter_wards("02")) == []
    legacy = divisions.cccd_province_codes()
    assert len(legacy) == 63 and "001" in legacy and "096" in legacy
    assert all(re.fullmatch(r"[0-9]{3}", code) for code in legacy)


def test_legacy_codes_are_read_without_importing_the_heavy_package() -> None:
    divisions.cccd_province_codes()
    assert "vietnamadminunits" not in sys.modules
