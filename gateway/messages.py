"""Readable text for machine error codes, in English and Vietnamese.

Clients branch on the code; the text is for the person filling in the form. Templates
take their values from an error's params, never from what the person typed, so no
identity number or phone is ever echoed back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LANGUAGES = ("en", "vi")
DEFAULT_LANGUAGE = "en"

FALLBACK_CODE = "invalid_value"
SUMMARY_CODE = "invalid_fields"

_TEMPLATES: dict[str, dict[str, str]] = {
    "en": {
        SUMMARY_CODE: "The registration has {count} invalid field(s).",
        FALLBACK_CODE: "Invalid value.",
        "invalid_json": "The request body is not valid JSON.",
        "unprocessable": "This request could not be checked; please try again later.",
        "required": "This field is required.",
        "wrong_type": "Must be {expected}.",
        "unknown_field": "Unknown field.",
        "too_many_fields": "Too many unknown fields; only the first {max} are listed.",
        "control_character": "Contains control or invisible formatting characters.",
        "invalid_unicode": "Contains invalid Unicode text.",
        "too_short": "Must be at least {min} characters long.",
        "too_long": "Must be at most {max} characters long.",
        "invalid_characters": (
            "May contain only letters, spaces, apostrophes, hyphens and periods."
        ),
        "invalid_date": "Must be a real date written YYYY-MM-DD.",
        "date_in_future": "Cannot be in the future.",
        "too_young": "The person must be at least {min_age} years old.",
        "too_old": "The age cannot be more than {max_age} years.",
        "date_in_past": "Cannot be in the past.",
        "date_too_far": "Must be within {max_days} days from today.",
        "invalid_choice": "Must be one of: {allowed}.",
        "consent_required": "Consent is required to register.",
        "invalid_phone": "Not a valid phone number.",
        "phone_not_vietnamese": "Must be a Vietnamese phone number.",
        "phone_not_mobile": "Must be a mobile number: notifications are sent by SMS.",
        "invalid_cccd": "A CCCD number has exactly 12 digits.",
        "cccd_province_unknown": (
            "The first three digits of a CCCD number must be a province code."
        ),
        "cccd_century_mismatch": (
            "The fourth digit of the CCCD number does not match the century of the date of birth."
        ),
        "cccd_gender_mismatch": ("The fourth digit of the CCCD number does not match the gender."),
        "cccd_year_mismatch": (
            "The fifth and sixth digits of the CCCD number do not match the year of birth."
        ),
        "invalid_cmnd": "A CMND number has exactly 9 digits.",
        "invalid_passport": (
            "A passport number has 6 to 9 letters and digits and starts with a letter."
        ),
        "invalid_health_insurance_number": (
            "Must be the 15-character health insurance card code or the 10-digit "
            "social insurance number."
        ),
        "invalid_email": "Not a valid email address.",
        "invalid_code": "Must be a code of up to {digits} digits.",
        "unknown_province": "Unknown province code.",
        "unknown_ward": "Unknown ward code.",
        "ward_not_in_province": "This ward is not in the chosen province.",
        "unknown_priority_group": "Unknown priority group.",
        "unknown_site": "Unknown vaccination site.",
    },
    "vi": {
        SUMMARY_CODE: "Đơn đăng ký có {count} trường không hợp lệ.",
        FALLBACK_CODE: "Giá trị không hợp lệ.",
        "invalid_json": "Nội dung gửi lên không phải JSON hợp lệ.",
        "unprocessable": "Không thể kiểm tra yêu cầu này; vui lòng thử lại sau.",
        "required": "Trường này là bắt buộc.",
        "wrong_type": "Phải là {expected}.",
        "unknown_field": "Trường không được hỗ trợ.",
        "too_many_fields": (
            "Có quá nhiều trường không được hỗ trợ; chỉ liệt kê {max} trường đầu tiên."
        ),
        "control_character": "Chứa ký tự điều khiển hoặc ký tự định dạng ẩn.",
        "invalid_unicode": "Chứa văn bản Unicode không hợp lệ.",
        "too_short": "Phải có ít nhất {min} ký tự.",
        "too_long": "Không được dài quá {max} ký tự.",
        "invalid_characters": (
            "Chỉ được chứa chữ cái, dấu cách, dấu nháy đơn, dấu gạch nối và dấu chấm."
        ),
        "invalid_date": "Phải là ngày có thật, viết theo định dạng YYYY-MM-DD.",
        "date_in_future": "Không được là ngày trong tương lai.",
        "too_young": "Người đăng ký phải từ {min_age} tuổi trở lên.",
        "too_old": "Tuổi không được vượt quá {max_age}.",
        "date_in_past": "Không được là ngày đã qua.",
        "date_too_far": "Phải trong vòng {max_days} ngày kể từ hôm nay.",
        "invalid_choice": "Phải là một trong các giá trị: {allowed}.",
        "consent_required": "Bạn cần đồng ý với điều khoản để đăng ký.",
        "invalid_phone": "Số điện thoại không hợp lệ.",
        "phone_not_vietnamese": "Phải là số điện thoại Việt Nam.",
        "phone_not_mobile": "Phải là số di động: thông báo được gửi qua tin nhắn SMS.",
        "invalid_cccd": "Số CCCD phải gồm đúng 12 chữ số.",
        "cccd_province_unknown": "Ba chữ số đầu của số CCCD phải là một mã tỉnh hợp lệ.",
        "cccd_century_mismatch": ("Chữ số thứ tư của số CCCD không khớp với thế kỷ của ngày sinh."),
        "cccd_gender_mismatch": "Chữ số thứ tư của số CCCD không khớp với giới tính.",
        "cccd_year_mismatch": ("Chữ số thứ năm và thứ sáu của số CCCD không khớp với năm sinh."),
        "invalid_cmnd": "Số CMND phải gồm đúng 9 chữ số.",
        "invalid_passport": (
            "Số hộ chiếu gồm 6 đến 9 chữ cái và chữ số, bắt đầu bằng một chữ cái."
        ),
        "invalid_health_insurance_number": (
            "Phải là mã thẻ BHYT gồm 15 ký tự hoặc mã số BHXH gồm 10 chữ số."
        ),
        "invalid_email": "Địa chỉ email không hợp lệ.",
        "invalid_code": "Phải là mã gồm tối đa {digits} chữ số.",
        "unknown_province": "Mã tỉnh/thành phố không tồn tại.",
        "unknown_ward": "Mã phường/xã không tồn tại.",
        "ward_not_in_province": "Phường/xã này không thuộc tỉnh/thành phố đã chọn.",
        "unknown_priority_group": "Nhóm ưu tiên không tồn tại.",
        "unknown_site": "Điểm tiêm không tồn tại.",
    },
}

# Words that appear as param values (the JSON type a field expects) and so need
# translating too; anything else is shown as it is (codes such as "male" stay literal
# because that is what the client must send).
_VOCABULARY: dict[str, dict[str, str]] = {
    "en": {
        "string": "a string (in quotes: a number loses leading zeros)",
        "object": "a JSON object",
        "boolean": "true or false",
        "true": "true",
    },
    "vi": {
        "string": "chuỗi ký tự (trong dấu ngoặc kép: số sẽ mất chữ số 0 ở đầu)",
        "object": "một đối tượng JSON",
        "boolean": "true hoặc false",
        "true": "true",
    },
}


class _Params(dict[str, str]):
    """Template values; a placeholder with no value renders as empty, never raises."""

    def __missing__(self, key: str) -> str:
        return ""


def _show(value: Any, vocabulary: Mapping[str, str]) -> str:
    if isinstance(value, str):
        return vocabulary.get(value, value)
    if isinstance(value, (list, tuple, frozenset, set)):
        return ", ".join(_show(item, vocabulary) for item in value)
    return str(value)


def has_code(code: str) -> bool:
    return code in _TEMPLATES[DEFAULT_LANGUAGE]


def render(code: str, params: Mapping[str, Any] | None = None, lang: str = "en") -> str:
    """The readable message for ``code`` in ``lang`` ("en" or "vi"; others fall back to
    English). Unknown codes get a generic message: rendering must never fail a response."""
    templates = _TEMPLATES.get(lang) or _TEMPLATES[DEFAULT_LANGUAGE]
    vocabulary = _VOCABULARY.get(lang) or _VOCABULARY[DEFAULT_LANGUAGE]
    template = templates.get(code) or templates[FALLBACK_CODE]
    values = _Params({key: _show(value, vocabulary) for key, value in (params or {}).items()})
    try:
        return template.format_map(values)
    except (ValueError, IndexError, AttributeError, KeyError):
        # Only a malformed template could get here; the bare template still reads well.
        return template


# --- language negotiation ---------------------------------------------------------

_ACCEPT_LANGUAGE_MAX = 512
_LANGUAGE_CACHE_MAX = 1024
_language_cache: dict[str, str] = {}


def preferred_language(accept_language: str | None) -> str:
    """Return "vi" when Accept-Language ranks Vietnamese above English, else "en".

    Among the two languages served, the one with the higher q wins, on a tie the one
    listed first; a header naming neither (or only "*") gets English. Never raises.
    """
    if not accept_language:
        return DEFAULT_LANGUAGE
    header = accept_language[:_ACCEPT_LANGUAGE_MAX]
    # Clients send a handful of distinct headers: remember the answers, boundedly.
    chosen = _language_cache.get(header)
    if chosen is None:
        chosen = _negotiate(header)
        if len(_language_cache) < _LANGUAGE_CACHE_MAX:
            _language_cache[header] = chosen
    return chosen


def _negotiate(header: str) -> str:
    best: dict[str, tuple[float, int]] = {}  # language -> (q, -position): max() wins
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.partition(";")
        primary = tag.strip().lower().split("-", 1)[0]
        if primary not in LANGUAGES:
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, raw = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(raw.strip())
                except ValueError:
                    quality = 0.0
                if not 0.0 <= quality <= 1.0:  # also catches nan
                    quality = 0.0
        rank = (quality, -position)
        if quality > 0 and (primary not in best or rank > best[primary]):
            best[primary] = rank
    vi, en = best.get("vi"), best.get("en")
    if vi is not None and (en is None or vi > en):
        return "vi"
    return DEFAULT_LANGUAGE
