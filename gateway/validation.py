"""Validation and normalisation of one registration: the field's real rules.

``validate`` turns what ``orjson.loads`` returned into a :class:`Registration` — the one
normalised form that is deduplicated, appended and stored — or raises
:class:`ValidationFailed` carrying every field error at once. It never raises anything
else, whatever the client sent: a 500 for client input is a bug.

Decisions worth knowing:

* Strings arrive in many spellings of the same value. Names, streets and occupations are
  NFC with whitespace collapsed (phones send NFD Vietnamese); phones become E.164; identity
  numbers lose spaces, dots and hyphens; enum values are trimmed and lower-cased; address
  codes are zero-padded ("1" -> "01"). Two spellings of one person give one Registration,
  so they dedupe as one.
* Control characters (Unicode Cc, U+0000 included) and invisible format characters (Cf:
  zero-width spaces, soft hyphens, bidi overrides) are rejected in every string field:
  they cannot be seen, so they would make two equal-looking names differ and could spoof
  what an operator reads. Vietnamese text never needs them.
* An empty string for an optional field means "not given", like null: web forms post
  empty inputs.
* Identity numbers, phones and address codes must be JSON strings: a number has lost its
  leading zeros before we see it.
* Error params never carry what the person typed; field paths are echoed only for
  unknown fields, cut to a safe length.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from gateway import constants as c
from gateway import divisions, messages
from gateway.exceptions import DataError, GatewayError
from gateway.messages import preferred_language
from gateway.phones import normalise_phone

__all__ = [
    "FieldError",
    "ReferenceView",
    "Registration",
    "ValidationFailed",
    "preferred_language",
    "validate",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

NAME_MIN = 2
NAME_MAX = 100
STREET_MAX = 200
OCCUPATION_MAX = 100
REFERENCE_CODE_MAX = 64
EMAIL_MAX = 254
EMAIL_LOCAL_MAX = 64
# Raw length caps, checked before any normalisation so a hostile string costs nothing.
# NFD text is longer than its NFC form, and collapsed whitespace shrinks it, hence the
# slack over the normalised maxima.
_RAW_SLACK = 3
_SHORT_RAW_MAX = 40  # phones, identity numbers, insurance numbers, dates, enum values
MAX_UNKNOWN_FIELDS_REPORTED = 20

_TOP_LEVEL_FIELDS = frozenset(
    {
        "full_name",
        "date_of_birth",
        "gender",
        "phone",
        "id_document",
        "health_insurance_number",
        "email",
        "address",
        "priority_group",
        "occupation",
        "site_id",
        "preferred_date",
        "preferred_session",
        "screening",
        "consent",
        "channel",
    }
)
_ID_DOCUMENT_FIELDS = frozenset({"type", "number"})
_ADDRESS_FIELDS = frozenset({"province_code", "ward_code", "street"})
_SCREENING_KEYS = frozenset(c.SCREENING_QUESTIONS)

# ASCII classes throughout: \d would also match Thai or Arabic-Indic digits.
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CCCD_RE = re.compile(r"[0-9]{12}")
_CMND_RE = re.compile(r"[0-9]{9}")
_PASSPORT_RE = re.compile(r"[A-Z][A-Z0-9]{5,8}")
# Health insurance card: 2-letter beneficiary group, benefit level 1-5, 2-digit province
# of issue, then the 10-digit social-insurance number; or that number alone.
_HEALTH_INSURANCE_RE = re.compile(r"[A-Z]{2}[1-5][0-9]{2}[0-9]{10}|[0-9]{10}")
_E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")
_EMAIL_LOCAL_RE = re.compile(r'[^\s@"(),:;<>\[\]\\]+')
_EMAIL_DOMAIN_RE = re.compile(r"[^\s@.]+(?:\.[^\s@.]+)+")
_SAFE_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

_ID_SEPARATORS = str.maketrans("", "", " .-")
# Phones with "smart punctuation" turn O'Brien into O’Brien; both are one person.
_NAME_PUNCTUATION_FOLD = str.maketrans({"\u2019": "'", "\u2018": "'", "\u2010": "-", "\u2011": "-"})
_NAME_PUNCTUATION_DELETE = str.maketrans("", "", " '-.")


@dataclass(frozen=True)
class FieldError:
    code: str
    params: Mapping[str, Any] = field(default_factory=dict)


class ValidationFailed(GatewayError):
    """The body broke one or more rules; ``errors`` maps each field path to its error."""

    def __init__(self, errors: Mapping[str, FieldError]) -> None:
        self.errors: dict[str, FieldError] = dict(errors)
        # Only well-known paths go into the text: it may end up in a log line, and an
        # unknown field's name is client-chosen.
        known = sorted(p for p in self.errors if p in _KNOWN_PATHS)
        super().__init__(f"{len(self.errors)} invalid field(s): {', '.join(known) or '-'}")

    def render(self, lang: str) -> dict[str, Any]:
        return {
            "error": messages.SUMMARY_CODE,
            "message": messages.render(messages.SUMMARY_CODE, {"count": len(self.errors)}, lang),
            "fields": {
                path: {"code": err.code, "message": messages.render(err.code, err.params, lang)}
                for path, err in self.errors.items()
            },
        }


class ReferenceView(Protocol):
    def has_site(self, site_id: str) -> bool: ...

    def has_priority_group(self, code: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Registration:
    full_name: str
    date_of_birth: date
    gender: str
    phone: str
    id_type: str
    id_number: str
    email: str | None
    health_insurance_number: str | None
    province_code: str
    ward_code: str
    street: str
    priority_group: str
    occupation: str
    site_id: str
    preferred_date: date | None
    preferred_session: str | None
    screening: dict[str, bool] | None
    channel: str

    def to_payload(self) -> dict[str, Any]:
        """JSON-ready, nested like the request; the inverse of :meth:`from_payload`."""
        return {
            "full_name": self.full_name,
            "date_of_birth": self.date_of_birth.isoformat(),
            "gender": self.gender,
            "phone": self.phone,
            "id_document": {"type": self.id_type, "number": self.id_number},
            "health_insurance_number": self.health_insurance_number,
            "email": self.email,
            "address": {
                "province_code": self.province_code,
                "ward_code": self.ward_code,
                "street": self.street,
            },
            "priority_group": self.priority_group,
            "occupation": self.occupation,
            "site_id": self.site_id,
            "preferred_date": (
                self.preferred_date.isoformat() if self.preferred_date is not None else None
            ),
            "preferred_session": self.preferred_session,
            "screening": dict(self.screening) if self.screening is not None else None,
            "channel": self.channel,
        }

    def fingerprint_material(self) -> bytes:
        """Canonical bytes of the content, channel excluded: the same person sending the
        same form from the web and then from the app is a replay, not a conflict."""
        payload = self.to_payload()
        del payload["channel"]
        return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Registration:
        """Rebuild a Registration from a stored payload (a stream entry).

        Checks structure and formats, not the rules that depend on the day or on
        reference data (age, site still open): those held when the entry was accepted.
        Unknown keys are ignored so an older writer can read a newer gateway's entries.
        Raises only :class:`DataError`, whose reason names a field, never a value.
        """
        try:
            return _registration_from_payload(payload)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a gap in the checks must still dead-letter
            raise DataError(f"malformed payload ({type(exc).__name__})") from None


_KNOWN_PATHS = (
    _TOP_LEVEL_FIELDS
    | {"body"}
    | {f"id_document.{k}" for k in _ID_DOCUMENT_FIELDS}
    | {f"address.{k}" for k in _ADDRESS_FIELDS}
    | {f"screening.{k}" for k in _SCREENING_KEYS}
)


# --- validate ----------------------------------------------------------------------

_MISSING: Any = object()


def validate(
    body: Any,
    *,
    channel: str | None,
    reference: ReferenceView,
    today: date,
    min_age_years: int,
) -> Registration:
    """Validate and normalise one registration body (see the module docstring)."""
    try:
        return _validate(body, channel, reference, today, min_age_years)
    except ValidationFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - see below
        # A bug here must not become a 500, and the exception text may hold the input:
        # log where it happened, not what it said.
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb else "?"
        logger.error("validation bug", extra={"exc_type": type(exc).__name__, "where": where})
        raise ValidationFailed({"body": FieldError("unprocessable")}) from None


def _validate(
    body: Any, header_channel: str | None, reference: ReferenceView, today: date, min_age: int
) -> Registration:
    if not isinstance(body, dict):
        raise ValidationFailed({"body": FieldError("wrong_type", {"expected": "object"})})
    errors: dict[str, FieldError] = {}
    _reject_unknown(body, _TOP_LEVEL_FIELDS, "", errors)
    get = body.get

    full_name = _name(get("full_name", _MISSING), "full_name", errors)
    date_of_birth = _date(get("date_of_birth", _MISSING), "date_of_birth", errors, True)
    if date_of_birth is not None:
        _check_age(date_of_birth, today, min_age, errors)
    gender = _choice(get("gender", _MISSING), "gender", c.GENDERS, errors, True)
    phone = _phone(get("phone", _MISSING), errors)
    id_type, id_number = _id_document(get("id_document", _MISSING), date_of_birth, gender, errors)
    insurance = _health_insurance(get("health_insurance_number", _MISSING), errors)
    email = _email(get("email", _MISSING), errors)
    province_code, ward_code, street = _address(get("address", _MISSING), errors)
    priority_group = _reference_code(get("priority_group", _MISSING), "priority_group", errors)
    if priority_group is not None and not reference.has_priority_group(priority_group):
        errors["priority_group"] = FieldError("unknown_priority_group")
    site_id = _reference_code(get("site_id", _MISSING), "site_id", errors)
    if site_id is not None and not reference.has_site(site_id):
        errors["site_id"] = FieldError("unknown_site")
    occupation = _text(get("occupation", _MISSING), "occupation", errors, 1, OCCUPATION_MAX)
    preferred_date = _date(get("preferred_date", _MISSING), "preferred_date", errors, False)
    if preferred_date is not None:
        if preferred_date < today:
            errors["preferred_date"] = FieldError("date_in_past")
        elif preferred_date > today + timedelta(days=c.PREFERRED_DATE_HORIZON_DAYS):
            errors["preferred_date"] = FieldError(
                "date_too_far", {"max_days": c.PREFERRED_DATE_HORIZON_DAYS}
            )
    session = _choice(
        get("preferred_session", _MISSING),
        "preferred_session",
        c.PREFERRED_SESSIONS,
        errors,
        False,
    )
    screening = _screening(get("screening", _MISSING), errors)
    _consent(get("consent", _MISSING), errors)
    # The body's channel is checked even when the header wins: a wrong value is refused,
    # never silently ignored.
    body_channel = _choice(get("channel", _MISSING), "channel", c.CHANNELS, errors, False)
    if header_channel is not None and header_channel.strip():
        chosen = _choice(header_channel, "channel", c.CHANNELS, errors, True)
    else:
        chosen = body_channel
        if chosen is None and "channel" not in errors:
            errors["channel"] = FieldError("required")

    if errors:
        raise ValidationFailed(errors)
    return Registration(
        full_name=_present(full_name),
        date_of_birth=_present(date_of_birth),
        gender=_present(gender),
        phone=_present(phone),
        id_type=_present(id_type),
        id_number=_present(id_number),
        email=email,
        health_insurance_number=insurance,
        province_code=_present(province_code),
        ward_code=_present(ward_code),
        street=_present(street),
        priority_group=_present(priority_group),
        occupation=_present(occupation),
        site_id=_present(site_id),
        preferred_date=preferred_date,
        preferred_session=session,
        screening=screening,
        channel=_present(chosen),
    )


def _present(value: _T | None) -> _T:
    # Every helper records an error whenever it returns None for a required field, so
    # this only fires on a bug, which validate() turns into a ValidationFailed.
    if value is None:
        raise RuntimeError("required value missing without a field error")
    return value


def _path_for_key(prefix: str, key: Any) -> str:
    if isinstance(key, str) and _SAFE_KEY_RE.fullmatch(key):
        name = key
    else:
        # Client-chosen names go back in the response: escape and cut them.
        name = ascii(key if isinstance(key, str) else "?")[1:-1][:64]
    return prefix + name


def _reject_unknown(
    obj: Mapping[Any, Any], known: frozenset[str], prefix: str, errors: dict[str, FieldError]
) -> None:
    if obj.keys() <= known:  # the common case, at C speed
        return
    reported = sum(1 for e in errors.values() if e.code == "unknown_field")
    for key in obj:
        if key in known:
            continue
        if reported >= MAX_UNKNOWN_FIELDS_REPORTED:
            errors["body"] = FieldError("too_many_fields", {"max": MAX_UNKNOWN_FIELDS_REPORTED})
            return
        errors.setdefault(_path_for_key(prefix, key), FieldError("unknown_field"))
        reported += 1


def _take_string(
    value: Any,
    path: str,
    errors: dict[str, FieldError],
    required: bool,
    max_len: int,
    slack: int = 1,
) -> str | None:
    """The raw string, or None (absent optional, or an error recorded). ``max_len`` is
    the limit shown to the person; the raw cap allows ``slack`` times that for text that
    normalisation shrinks."""
    if value is _MISSING or value is None:
        if required:
            errors[path] = FieldError("required")
        return None
    if not isinstance(value, str):
        errors[path] = FieldError("wrong_type", {"expected": "string"})
        return None
    if len(value) > max_len * slack:
        errors[path] = FieldError("too_long", {"max": max_len})
        return None
    code = _bad_character(value)
    if code is not None:
        errors[path] = FieldError(code)
        return None
    if not value.strip():
        # Blank is "not given", as for null: web forms post their empty inputs.
        if required:
            errors[path] = FieldError("required")
        return None
    return value


def _bad_character(value: str) -> str | None:
    if value.isprintable():  # the C-speed common case: nothing of Cc, Cf, Cs in there
        return None
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "invalid_unicode"
        if category in ("Cc", "Cf"):
            return "control_character"
    return None  # only spaces other than U+0020, unassigned or private-use characters


def normalise_text(value: str) -> str:
    """NFC with runs of whitespace collapsed to one space and the ends stripped."""
    if not value.isascii():
        value = unicodedata.normalize("NFC", value)
    return " ".join(value.split())


def normalise_name(value: str) -> str:
    return normalise_text(value.translate(_NAME_PUNCTUATION_FOLD))


def _is_name(value: str) -> bool:
    if not value[:1].isalpha():
        return False
    core = value.translate(_NAME_PUNCTUATION_DELETE)
    if core.isalpha():
        return True
    # Combining marks survive NFC in some scripts; they belong to the letter before.
    return all(ch.isalpha() or unicodedata.category(ch)[0] == "M" for ch in core)


def _text(
    value: Any, path: str, errors: dict[str, FieldError], min_len: int, max_len: int
) -> str | None:
    raw = _take_string(value, path, errors, True, max_len, _RAW_SLACK)
    if raw is None:
        return None
    text = normalise_text(raw)
    if len(text) < min_len:
        errors[path] = FieldError("required" if not text else "too_short", {"min": min_len})
        return None
    if len(text) > max_len:
        errors[path] = FieldError("too_long", {"max": max_len})
        return None
    return text


def _name(value: Any, path: str, errors: dict[str, FieldError]) -> str | None:
    raw = _take_string(value, path, errors, True, NAME_MAX, _RAW_SLACK)
    if raw is None:
        return None
    name = normalise_name(raw)
    if not name:
        errors[path] = FieldError("required")
    elif not _is_name(name):
        errors[path] = FieldError("invalid_characters")
    elif len(name) < NAME_MIN:
        errors[path] = FieldError("too_short", {"min": NAME_MIN})
    elif len(name) > NAME_MAX:
        errors[path] = FieldError("too_long", {"max": NAME_MAX})
    else:
        return name
    return None


def _choice(
    value: Any, path: str, allowed: tuple[str, ...], errors: dict[str, FieldError], required: bool
) -> str | None:
    raw = _take_string(value, path, errors, required, _SHORT_RAW_MAX)
    if raw is None:
        return None
    chosen = raw.strip().lower()
    if chosen in allowed:
        return chosen
    errors[path] = FieldError("invalid_choice", {"allowed": allowed})
    return None


def _parse_date(raw: str) -> date | None:
    raw = raw.strip()
    if not _DATE_RE.fullmatch(raw):
        return None
    try:
        # Only YYYY-MM-DD reaches here (fromisoformat alone also takes 20210101 and
        # week dates); it rejects 2021-02-30 and month 13.
        return date.fromisoformat(raw)
    except ValueError:
        return None


def _date(value: Any, path: str, errors: dict[str, FieldError], required: bool) -> date | None:
    raw = _take_string(value, path, errors, required, _SHORT_RAW_MAX)
    if raw is None:
        return None
    parsed = _parse_date(raw)
    if parsed is None:
        errors[path] = FieldError("invalid_date")
    return parsed


def _check_age(born: date, today: date, min_age: int, errors: dict[str, FieldError]) -> None:
    if born > today:
        errors["date_of_birth"] = FieldError("date_in_future")
        return
    age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    if age < min_age:
        errors["date_of_birth"] = FieldError("too_young", {"min_age": min_age})
    elif age > c.MAX_AGE_YEARS:
        errors["date_of_birth"] = FieldError("too_old", {"max_age": c.MAX_AGE_YEARS})


def _consent(value: Any, errors: dict[str, FieldError]) -> None:
    if value is _MISSING or value is None:
        errors["consent"] = FieldError("required")
    elif not isinstance(value, bool):
        errors["consent"] = FieldError("wrong_type", {"expected": "boolean"})
    elif value is not True:
        errors["consent"] = FieldError("consent_required")


# --- phone ---------------------------------------------------------------------------


def _phone(value: Any, errors: dict[str, FieldError]) -> str | None:
    raw = _take_string(value, "phone", errors, True, _SHORT_RAW_MAX)
    if raw is None:
        return None
    e164, code = normalise_phone(raw)
    if code is not None:
        errors["phone"] = FieldError(code)
    return e164


# --- identity documents ------------------------------------------------------------


def _id_document(
    value: Any, born: date | None, gender: str | None, errors: dict[str, FieldError]
) -> tuple[str | None, str | None]:
    if value is _MISSING or value is None:
        errors["id_document"] = FieldError("required")
        return None, None
    if not isinstance(value, dict):
        errors["id_document"] = FieldError("wrong_type", {"expected": "object"})
        return None, None
    _reject_unknown(value, _ID_DOCUMENT_FIELDS, "id_document.", errors)
    id_type = _choice(
        value.get("type", _MISSING), "id_document.type", c.ID_DOCUMENT_TYPES, errors, True
    )
    raw = _take_string(
        value.get("number", _MISSING), "id_document.number", errors, True, _SHORT_RAW_MAX
    )
    if raw is None or id_type is None:
        return id_type, None
    number, code = normalise_id_number(id_type, raw)
    if number is not None and id_type == "cccd":
        code = cccd_mismatch(number, born, gender)
    if code is not None:
        errors["id_document.number"] = FieldError(code)
        return id_type, None
    return id_type, number


def normalise_id_number(id_type: str, raw: str) -> tuple[str | None, str | None]:
    """(number, None) in stored form, or (None, error code)."""
    number = raw.translate(_ID_SEPARATORS)
    # isascii first: str.upper() maps some non-ASCII letters onto ASCII ones
    # ("ſ" -> "S"), which would make two spellings of a number.
    if not number.isascii():
        return None, f"invalid_{id_type}"
    if id_type == "cccd":
        return (number, None) if _CCCD_RE.fullmatch(number) else (None, "invalid_cccd")
    if id_type == "cmnd":
        return (number, None) if _CMND_RE.fullmatch(number) else (None, "invalid_cmnd")
    number = number.upper()
    return (number, None) if _PASSPORT_RE.fullmatch(number) else (None, "invalid_passport")


def cccd_mismatch(number: str, born: date | None, gender: str | None) -> str | None:
    """The first way a 12-digit CCCD number contradicts the form, or None.

    Digits 1-3: province of birth registration (pre-2025 code). Digit 4: century and
    gender — 2 * (centuries since 1900) + (1 if female else 0), so 0/1 for 1900-1999,
    2/3 for 2000-2099, 4/5 for 2100-2199. Digits 5-6: the last two digits of the year
    of birth. Unknown birth date or gender skips the parts that need them.
    """
    if number[:3] not in divisions.cccd_province_codes():
        return "cccd_province_unknown"
    if born is None:
        return None
    digit = ord(number[3]) - ord("0")
    if digit // 2 != (born.year - 1900) // 100:
        return "cccd_century_mismatch"
    if gender in ("male", "female") and digit % 2 != (gender == "female"):
        return "cccd_gender_mismatch"
    if number[4:6] != f"{born.year % 100:02d}":
        return "cccd_year_mismatch"
    return None


def _health_insurance(value: Any, errors: dict[str, FieldError]) -> str | None:
    path = "health_insurance_number"
    raw = _take_string(value, path, errors, False, _SHORT_RAW_MAX)
    if raw is None:
        return None
    number = raw.translate(_ID_SEPARATORS)
    if number.isascii():
        number = number.upper()
        if _HEALTH_INSURANCE_RE.fullmatch(number):
            return number
    errors[path] = FieldError("invalid_health_insurance_number")
    return None


def normalise_email(raw: str) -> str | None:
    """The address with its domain lower-cased, or None when it is not an address."""
    email = unicodedata.normalize("NFC", raw.strip())
    if len(email) > EMAIL_MAX or email.count("@") != 1:
        return None
    local, domain = email.split("@")
    if len(local) > EMAIL_LOCAL_MAX or not _EMAIL_LOCAL_RE.fullmatch(local):
        return None
    if not _EMAIL_DOMAIN_RE.fullmatch(domain):
        return None
    return f"{local}@{domain.lower()}"


def _email(value: Any, errors: dict[str, FieldError]) -> str | None:
    raw = _take_string(value, "email", errors, False, EMAIL_MAX, _RAW_SLACK)
    if raw is None:
        return None
    email = normalise_email(raw)
    if email is None:
        errors["email"] = FieldError("invalid_email")
    return email


# --- address, reference codes, screening -------------------------------------------


def _division_code(value: Any, path: str, width: int, errors: dict[str, FieldError]) -> str | None:
    raw = _take_string(value, path, errors, True, _SHORT_RAW_MAX)
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= width):
        errors[path] = FieldError("invalid_code", {"digits": width})
        return None
    return raw.zfill(width)


def _address(
    value: Any, errors: dict[str, FieldError]
) -> tuple[str | None, str | None, str | None]:
    if value is _MISSING or value is None:
        errors["address"] = FieldError("required")
        return None, None, None
    if not isinstance(value, dict):
        errors["address"] = FieldError("wrong_type", {"expected": "object"})
        return None, None, None
    _reject_unknown(value, _ADDRESS_FIELDS, "address.", errors)
    province = _division_code(
        value.get("province_code", _MISSING), "address.province_code", 2, errors
    )
    ward = _division_code(value.get("ward_code", _MISSING), "address.ward_code", 5, errors)
    street = _text(value.get("street", _MISSING), "address.street", errors, 1, STREET_MAX)
    if province is not None and not divisions.province_exists(province):
        errors["address.province_code"] = FieldError("unknown_province")
        province = None
    if ward is not None:
        owner = divisions.ward_province(ward)
        if owner is None:
            errors["address.ward_code"] = FieldError("unknown_ward")
            ward = None
        elif province is not None and owner != province:
            errors["address.ward_code"] = FieldError("ward_not_in_province")
            ward = None
    return province, ward, street


def _reference_code(value: Any, path: str, errors: dict[str, FieldError]) -> str | None:
    raw = _take_string(value, path, errors, True, REFERENCE_CODE_MAX, _RAW_SLACK)
    if raw is None:
        return None
    code = raw.strip()
    if not code:
        errors[path] = FieldError("required")
        return None
    if len(code) > REFERENCE_CODE_MAX:
        errors[path] = FieldError("too_long", {"max": REFERENCE_CODE_MAX})
        return None
    return code


def _screening(value: Any, errors: dict[str, FieldError]) -> dict[str, bool] | None:
    if value is _MISSING or value is None:
        return None
    if not isinstance(value, dict):
        errors["screening"] = FieldError("wrong_type", {"expected": "object"})
        return None
    _reject_unknown(value, _SCREENING_KEYS, "screening.", errors)
    answers: dict[str, bool] = {}
    for question in c.SCREENING_QUESTIONS:  # canonical order, whatever the client sent
        answer = value.get(question, _MISSING)
        if answer is _MISSING or answer is None:
            continue
        if isinstance(answer, bool):
            answers[question] = answer
        else:
            errors[f"screening.{question}"] = FieldError("wrong_type", {"expected": "boolean"})
    # No answers and no screening are the same content (and the same fingerprint).
    return answers or None


# --- from_payload --------------------------------------------------------------------

_DIGITS_2_RE = re.compile(r"[0-9]{2}")
_DIGITS_5_RE = re.compile(r"[0-9]{5}")
_STORED_ID_RE = {"cccd": _CCCD_RE, "cmnd": _CMND_RE, "passport": _PASSPORT_RE}


def _stored_object(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        raise DataError(f"{path}: missing")
    if not isinstance(value, Mapping):
        raise DataError(f"{path}: wrong type")
    return value


def _stored_optional(
    value: Any,
    path: str,
    max_len: int,
    pattern: re.Pattern[str] | None = None,
    allowed: tuple[str, ...] | None = None,
) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{path}: wrong type")
    # NUL and other controls would also break COPY into Postgres.
    if (
        not value
        or len(value) > max_len
        or _bad_character(value) is not None
        or (pattern is not None and not pattern.fullmatch(value))
        or (allowed is not None and value not in allowed)
    ):
        raise DataError(f"{path}: malformed")
    return value


def _stored(
    value: Any,
    path: str,
    max_len: int,
    pattern: re.Pattern[str] | None = None,
    allowed: tuple[str, ...] | None = None,
) -> str:
    checked = _stored_optional(value, path, max_len, pattern, allowed)
    if checked is None:
        raise DataError(f"{path}: missing")
    return checked


def _stored_date(value: Any, path: str) -> date | None:
    if value is None:
        return None
    parsed = _parse_date(value) if isinstance(value, str) and len(value) == 10 else None
    if parsed is None:
        raise DataError(f"{path}: malformed")
    return parsed


def _registration_from_payload(payload: Mapping[str, Any]) -> Registration:
    p = _stored_object(payload, "payload")
    doc = _stored_object(p.get("id_document"), "id_document")
    address = _stored_object(p.get("address"), "address")
    id_type = _stored(doc.get("type"), "id_document.type", 16, allowed=c.ID_DOCUMENT_TYPES)
    full_name = _stored(p.get("full_name"), "full_name", NAME_MAX)
    if normalise_name(full_name) != full_name or not _is_name(full_name):
        raise DataError("full_name: malformed")
    email = _stored_optional(p.get("email"), "email", EMAIL_MAX)
    if email is not None and normalise_email(email) != email:
        raise DataError("email: malformed")
    date_of_birth = _stored_date(p.get("date_of_birth"), "date_of_birth")
    if date_of_birth is None:
        raise DataError("date_of_birth: missing")
    screening: dict[str, bool] | None = None
    if p.get("screening") is not None:
        answers = _stored_object(p["screening"], "screening")
        if not all(k in _SCREENING_KEYS and isinstance(v, bool) for k, v in answers.items()):
            raise DataError("screening: malformed")
        screening = {q: answers[q] for q in c.SCREENING_QUESTIONS if q in answers} or None
    return Registration(
        full_name=full_name,
        date_of_birth=date_of_birth,
        gender=_stored(p.get("gender"), "gender", 16, allowed=c.GENDERS),
        phone=_stored(p.get("phone"), "phone", 16, _E164_RE),
        id_type=id_type,
        id_number=_stored(doc.get("number"), "id_document.number", 16, _STORED_ID_RE[id_type]),
        email=email,
        health_insurance_number=_stored_optional(
            p.get("health_insurance_number"), "health_insurance_number", 15, _HEALTH_INSURANCE_RE
        ),
        province_code=_stored(
            address.get("province_code"), "address.province_code", 2, _DIGITS_2_RE
        ),
        ward_code=_stored(address.get("ward_code"), "address.ward_code", 5, _DIGITS_5_RE),
        street=_stored(address.get("street"), "address.street", STREET_MAX),
        priority_group=_stored(p.get("priority_group"), "priority_group", REFERENCE_CODE_MAX),
        occupation=_stored(p.get("occupation"), "occupation", OCCUPATION_MAX),
        site_id=_stored(p.get("site_id"), "site_id", REFERENCE_CODE_MAX),
        preferred_date=_stored_date(p.get("preferred_date"), "preferred_date"),
        preferred_session=_stored_optional(
            p.get("preferred_session"), "preferred_session", 16, allowed=c.PREFERRED_SESSIONS
        ),
        screening=screening,
        channel=_stored(p.get("channel"), "channel", 16, allowed=c.CHANNELS),
    )
