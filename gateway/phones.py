"""Vietnamese phone numbers: every common spelling to one E.164 form, mobile only.

The verdict is the ``phonenumbers`` library's; the usual spellings take a fast path
decided from the library's own VN metadata (a test checks the two always agree).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberFormat, PhoneNumberType

_PHONE_CHARS_RE = re.compile(r"[0-9+() ./\-]+")
_PHONE_SEPARATORS = str.maketrans("", "", " .-()/")
_MOBILE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
_VN_COUNTRY_CODE = 84


def normalise_phone(raw: str) -> tuple[str | None, str | None]:
    """(E.164, None) for a Vietnamese mobile number in any common spelling, else
    (None, error code)."""
    raw = raw.strip()
    # phonenumbers also reads letters (vanity numbers) and extensions; people's mobile
    # numbers have neither.
    if not raw.isascii() or not _PHONE_CHARS_RE.fullmatch(raw):
        return None, "invalid_phone"
    compact = raw.translate(_PHONE_SEPARATORS)
    # Fast path for the unambiguous spellings (+84…, 0084…, 0…): the library's full
    # parse costs ~50 µs, its type check alone ~15 µs, this ~1 µs.
    if compact.startswith("+84"):
        national = compact[3:]
    elif compact.startswith("0084"):
        national = compact[4:]
    elif compact.startswith("0"):
        national = compact[1:]
    else:
        national = ""
    if national.isdigit() and national[0:1] != "0" and _vn_mobile_classifier()(national):
        return "+84" + national, None
    # Everything else (84… without a plus, odd prefixes, and every rejection) goes
    # through the library's full parser so the verdict is its verdict.
    try:
        number = phonenumbers.parse(raw, "VN")
    except phonenumbers.NumberParseException:
        return None, "invalid_phone"
    if number.extension:
        return None, "invalid_phone"
    if number.country_code != _VN_COUNTRY_CODE:
        return None, "phone_not_vietnamese"
    if not phonenumbers.is_valid_number(number):
        return None, "invalid_phone"
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        return None, "phone_not_mobile"
    return phonenumbers.format_number(number, PhoneNumberFormat.E164), None


def _desc_matcher(desc: Any) -> Callable[[str], bool] | None:
    """Mirror of phonenumbers' private _is_number_matching_desc for one description
    (None when the description can never match)."""
    if desc is None or not desc.national_number_pattern:
        return None
    fullmatch = re.compile(desc.national_number_pattern).fullmatch
    lengths = frozenset(desc.possible_length or ())
    if lengths:
        return lambda national: len(national) in lengths and fullmatch(national) is not None
    return lambda national: fullmatch(national) is not None


@functools.cache
def _vn_mobile_classifier() -> Callable[[str], bool]:
    """Whether a Vietnamese national number is one that phonenumbers.number_type calls
    MOBILE or FIXED_LINE_OR_MOBILE, decided from the library's own VN metadata.

    number_type answers the first of: not the general pattern -> UNKNOWN; premium, toll
    free, ... voicemail; then fixed line (FIXED_LINE_OR_MOBILE when the mobile pattern
    is the same or also matches); then mobile. So the answer is a mobile kind exactly
    when the number matches the general pattern, none of the special kinds, and the
    mobile pattern (or the fixed-line one when the two patterns are the same). A test
    checks this agrees with number_type.
    """
    metadata = PhoneMetadata.metadata_for_region("VN")
    never: Callable[[str], bool] = lambda national: False
    if metadata is None:
        return never
    special_names = (
        "premium_rate",
        "toll_free",
        "shared_cost",
        "voip",
        "personal_number",
        "pager",
        "uan",
        "voicemail",
    )
    specials = [m for m in (_desc_matcher(getattr(metadata, n)) for n in special_names) if m]
    general = _desc_matcher(metadata.general_desc)
    kind = _desc_matcher(
        metadata.fixed_line if metadata.same_mobile_and_fixed_line_pattern else metadata.mobile
    )
    if general is None or kind is None:
        return never
    checks = (kind, general)  # the likely-to-fail check first

    def is_mobile(national: str) -> bool:
        return all(check(national) for check in checks) and not any(
            special(national) for special in specials
        )

    return is_mobile
