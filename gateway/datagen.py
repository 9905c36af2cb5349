"""Realistic registrations for the tests, the ``gateway demo`` command and the Locust
load tests.

Importable without aiohttp, redis or asyncpg: Locust runs in its own environment with only
the standard library, ``vietnam_provinces`` and ``phonenumbers``. Nothing here imports
another gateway module except :mod:`gateway.constants`.

What "realistic" means here, rule by rule:

* Names: family names drawn from the published distribution (Nguyễn ~38 %, Trần, Lê,
  Phạm, ...), Hoàng/Vũ in the north and Huỳnh/Võ from Đà Nẵng southward (one name, two
  regional spellings); middle names consistent with gender and generation (Thị and Văn
  are commoner among older people); a fifth of names have two middle names. About 7 % of
  bodies arrive in NFD, as some phone keyboards send Vietnamese.
* Age: adults from ``min_age_years`` to 90, skewed older as on the launch days of the
  2021 campaign, when the over-50s and over-65s registered first.
* Identity documents: ~90 % CCCD, whose 12 digits agree with the form: "0" + a pre-2025
  (63-province) code read from ``vietnamadminunits``' bundled SQLite file — usually one of
  the old provinces merged into the person's current province — then the gender/century
  digit (0/1 male/female born 1900-1999, 2/3 born 2000-2099), the last two digits of the
  birth year and a 6-digit serial. ~8.5 % CMND (9 digits), ~1.5 % passports (a letter and
  7 digits). A generator never issues the same document twice.
* Phones: real Vietnamese mobile prefixes weighted by operator market share, every number
  checked against ``phonenumbers``' own metadata for Vietnamese mobiles, written in the
  spellings people type ("0912345678", "+84 912 345 678", "84912345678",
  "(+84) 912-345-678", "0912.345.678", ...). 2 % of people share a phone with someone
  registered shortly before (one phone registering a family).
* Address: a current (post-2025) province weighted by its number of wards — a rough
  stand-in for population — and a ward of that province from ``vietnam_provinces``; the
  street line follows regional habits (ngõ in the north, kiệt in Huế and Đà Nẵng, hẻm and
  ấp in the south).
* Site: from the sites CSV, in the person's province nine times out of ten.
* Priority group: follows age and occupation (a nurse is G01, a retiree over 65 is G09)
  with some noise. The default groups file lists the 16 groups of the Ministry of
  Health's plan for the 2021-2022 campaign (Decision 3355/QĐ-BYT of 8 July 2021), which
  extended the priority groups of Government Resolution 21/NQ-CP of 26 February 2021;
  they are the groups the national registration portal offered.

Everything random comes from one ``random.Random(seed)``: a seed gives the same people in
the same order (for the same ``today`` and reference files). Reference data is loaded once
per process and shared by all generators; ``person()`` then costs tens of microseconds.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import random
import re
import sqlite3
import unicodedata
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from itertools import accumulate
from pathlib import Path
from typing import Any, Generic, TypeVar

from phonenumbers import PhoneMetadata
from vietnam_provinces import Province, Ward

from gateway import constants as c

__all__ = [
    "KINDS", "Generator", "Submission", "identity_of", "legacy_province_codes",
    "phone_spellings",
]  # fmt: skip

KIND_NEW = "new"
KIND_RETRY = "retry"
KIND_RESPELLED = "respelled"
KIND_CONFLICT = "conflict"
KIND_INVALID = "invalid"
KINDS = (KIND_NEW, KIND_RETRY, KIND_RESPELLED, KIND_CONFLICT, KIND_INVALID)
_DERIVED = frozenset({KIND_RETRY, KIND_RESPELLED, KIND_CONFLICT})

MAX_AGE = 90
# A retry, respelling or conflict refers to a "new" submission at least this many places
# earlier, so a client sending in order with bounded concurrency has had the original
# answered first (otherwise the "conflict" would be the one stored).
REFERENCE_GAP = 64
_RECENT_MAX = 20_000  # ring of recent "new" submissions that later ones may refer to
_LEGACY_PACKAGE = "vietnamadminunits"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Submission:
    """One request as a client sends it, and what the server should make of it."""

    kind: str  # one of KINDS
    body: dict[str, Any] | bytes  # bytes only for malformed JSON; shared: do not mutate
    channel: str
    idempotency_key: str | None
    invalid_field: str | None  # for kind == "invalid": the field path the server must name
    identity: str  # "type:NUMBER", normalised; a label for reconciliation, never sent


@dataclass(frozen=True, slots=True)
class _Weighted(Generic[_T]):
    """Items with weights, drawn by one bisect (random.choices costs several µs)."""

    items: tuple[_T, ...]
    bounds: tuple[float, ...]  # cumulative weights without the last: the index never overflows
    total: float

    @classmethod
    def of(cls, pairs: Sequence[tuple[_T, float]]) -> _Weighted[_T]:
        cum = tuple(accumulate(w for _, w in pairs))
        return cls(tuple(p for p, _ in pairs), cum[:-1], cum[-1])

    def pick(self, rand: Callable[[], float]) -> _T:
        return self.items[bisect_right(self.bounds, rand() * self.total)]


def _one(seq: Sequence[_T], rand: Callable[[], float]) -> _T:
    return seq[int(rand() * len(seq))]


# --- reference data, loaded once per process ---------------------------------------


@dataclass(frozen=True)
class _Divisions:
    provinces: _Weighted[str]  # current codes "01".."96", weighted by number of wards
    codes: tuple[str, ...]
    wards: Mapping[str, tuple[str, ...]]  # province -> ward codes
    rural: frozenset[str]  # ward codes of communes (xã) and special zones (đặc khu)
    legacy_codes: tuple[str, ...]  # pre-2025 province codes, 2 digits
    legacy_in: Mapping[str, tuple[str, ...]]  # current province -> old provinces in it


def _legacy_data_dir() -> Path:
    # find_spec locates the package without running its heavy __init__ (geo libraries).
    spec = importlib.util.find_spec(_LEGACY_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{_LEGACY_PACKAGE} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@lru_cache(maxsize=1)
def _legacy_tables() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """Old province codes, and for each current province the old ones merged into it."""
    data = _legacy_data_dir()
    db = sqlite3.connect(f"{(data / 'dataset.db').as_uri()}?mode=ro", uri=True)
    try:
        sql = "SELECT DISTINCT provinceKey, provinceCode FROM {}"
        old_keys = {k: str(v).zfill(2) for k, v in db.execute(sql.format("admin_units_legacy"))}
        new_keys = {k: str(v).zfill(2) for k, v in db.execute(sql.format("admin_units"))}
    finally:
        db.close()
    codes = tuple(sorted(set(old_keys.values())))
    if len(codes) < 60:
        raise RuntimeError(f"{_LEGACY_PACKAGE}: expected 63 legacy provinces, got {len(codes)}")
    try:
        with open(data / "converter_2025.json", encoding="utf-8") as fh:
            groups = json.load(fh)["DICT_PROVINCE"]
        merged = {
            new_keys[new]: tuple(sorted(old_keys[k] for k in old)) for new, old in groups.items()
        }
    except (OSError, ValueError, KeyError, TypeError):
        # Without the merge table CCCD prefixes are still real old codes, just not tied
        # to the address.
        merged = {}
    return codes, merged


def legacy_province_codes() -> tuple[str, ...]:
    """The 63 pre-2025 province codes (2 digits); a CCCD starts with "0" + one of them."""
    return _legacy_tables()[0]


@lru_cache(maxsize=1)
def _divisions() -> _Divisions:
    wards: dict[str, tuple[str, ...]] = {}
    rural: set[str] = set()
    for province in sorted(Province.iter_all(), key=lambda p: p.code.value):
        codes = []
        for ward in sorted(Ward.iter_by_province(province.code), key=lambda w: w.code.value):
            codes.append(f"{ward.code.value:05d}")
            if not ward.name.startswith("Phường"):
                rural.add(codes[-1])
        wards[f"{province.code.value:02d}"] = tuple(codes)
    legacy, merged = _legacy_tables()
    known = set(legacy)
    legacy_in = {
        p: tuple(code for code in merged.get(p, ()) if code in known)
        or ((p,) if p in known else ())
        for p in wards
    }
    return _Divisions(
        provinces=_Weighted.of([(p, float(len(w))) for p, w in wards.items()]),
        codes=tuple(wards),
        wards=wards,
        rural=frozenset(rural),
        legacy_codes=legacy,
        legacy_in=legacy_in,
    )


# Mobile prefixes (with the trunk 0) by operator, weighted by the operators' rough
# subscriber shares so prefixes are drawn as often as people have them.
_OPERATORS: tuple[tuple[float, tuple[str, ...]], ...] = (
    (54.0, ("086", "096", "097", "098", "032", "033", "034", "035", "036", "037", "038",
            "039")),  # Viettel
    (22.0, ("088", "091", "094", "081", "082", "083", "084", "085")),  # Vinaphone
    (20.0, ("089", "090", "093", "070", "076", "077", "078", "079")),  # Mobifone
    (3.0, ("092", "056", "058")),  # Vietnamobile
    (1.0, ("099", "059")),  # Gmobile
)  # fmt: skip


@lru_cache(maxsize=1)
def _mobile_pattern() -> re.Pattern[str]:
    """phonenumbers' own test for a Vietnamese mobile (national significant number, no
    trunk 0) as one regex: what ``number_type() == MOBILE`` checks, at a regex's cost
    instead of ~30 µs a number."""
    metadata = PhoneMetadata.metadata_for_region("VN")
    if metadata is None or metadata.mobile is None or metadata.general_desc is None:
        raise RuntimeError("phonenumbers has no metadata for Vietnamese mobiles")
    general = metadata.general_desc.national_number_pattern
    return re.compile(f"(?=(?:{general})$)(?:{metadata.mobile.national_number_pattern})")


@lru_cache(maxsize=1)
def _phone_heads() -> _Weighted[str]:
    """First five digits ("09123") of valid 10-digit mobiles: some prefixes are only
    partly allocated (089 is mobile only as 0896-0899)."""
    pattern = _mobile_pattern()
    pairs: list[tuple[str, float]] = []
    for share, prefixes in _OPERATORS:
        for prefix in prefixes:
            valid = [
                f"{prefix}{d:02d}" for d in range(100)
                if all(pattern.fullmatch(f"{prefix[1:]}{d:02d}{t}") for t in ("00000", "99999"))
            ]  # fmt: skip
            pairs += [(head, share / len(prefixes) / len(valid)) for head in valid]
    return _Weighted.of(pairs)


def _read_data_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("gateway.data").joinpath(name).read_text(encoding="utf-8")
    # Lines starting with "#" are comments, as for the loader in gateway.store.
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


@lru_cache(maxsize=1)
def _default_sites() -> tuple[tuple[str, str], ...]:
    rows = _read_data_csv("sites_dev.csv")
    return tuple((row["site_id"], row["province_code"].zfill(2)) for row in rows)


@lru_cache(maxsize=1)
def _default_priority_groups() -> tuple[str, ...]:
    rows = sorted(_read_data_csv("priority_groups.csv"), key=lambda r: int(r["rank"]))
    return tuple(row["code"] for row in rows)


_SITE_PROVINCE_RE = re.compile(r"^VN-([0-9]{2})-")

# --- people ---------------------------------------------------------------------------

# Shares in percent from surname surveys; the long tail is spread over the rarer names.
_FAMILY_COMMON = (
    ("Nguyễn", 38.4), ("Trần", 11.0), ("Lê", 9.5), ("Phạm", 7.1), ("Phan", 4.5),
    ("Đặng", 2.1), ("Bùi", 2.0), ("Đỗ", 1.4), ("Hồ", 1.3), ("Ngô", 1.3), ("Dương", 1.0),
    ("Lý", 0.5), ("Đào", 0.4), ("Đoàn", 0.4), ("Đinh", 0.4), ("Trương", 0.4), ("Trịnh", 0.3),
    ("Lương", 0.3), ("Mai", 0.3), ("Lâm", 0.3), ("Cao", 0.3), ("Hà", 0.3), ("Phùng", 0.2),
    ("Tạ", 0.2), ("Tô", 0.2), ("Vương", 0.2), ("Chu", 0.2), ("Lưu", 0.2), ("Nông", 0.2),
    ("Kiều", 0.1), ("Quách", 0.1), ("Thái", 0.1), ("Triệu", 0.1), ("La", 0.1), ("Lò", 0.1),
)  # fmt: skip
# Hoàng/Huỳnh and Vũ/Võ are one name each, spelt apart since a 19th-century naming taboo:
# Huỳnh and Võ dominate from Quảng Nam (now Đà Nẵng) southward.
_FAMILY_NORTH = _FAMILY_COMMON + (("Hoàng", 4.5), ("Huỳnh", 0.6), ("Vũ", 3.4), ("Võ", 0.5))
_FAMILY_SOUTH = _FAMILY_COMMON + (("Hoàng", 1.2), ("Huỳnh", 3.9), ("Vũ", 0.9), ("Võ", 3.0))
_SOUTHERN_NAMES_FROM = 48  # province codes from Đà Nẵng on

# (gender, born before 1980) -> middle names with weights.
_MIDDLE = {
    ("male", True): (("Văn", 45), ("Đức", 9), ("Minh", 6), ("Quang", 6), ("Hữu", 7),
                     ("Công", 5), ("Xuân", 5), ("Đình", 5), ("Ngọc", 3), ("Thanh", 4),
                     ("Quốc", 3), ("Bá", 2)),
    ("male", False): (("Văn", 20), ("Đức", 10), ("Minh", 12), ("Quang", 7), ("Hữu", 5),
                      ("Thanh", 5), ("Công", 4), ("Quốc", 6), ("Trọng", 4), ("Hoàng", 4),
                      ("Tuấn", 3), ("Duy", 4), ("Gia", 4), ("Anh", 4), ("Thành", 3),
                      ("Tiến", 3)),
    ("female", True): (("Thị", 70), ("Ngọc", 5), ("Thu", 4), ("Kim", 5), ("Thanh", 4),
                       ("Hồng", 4), ("Bích", 3), ("Thúy", 3), ("Minh", 2)),
    ("female", False): (("Thị", 30), ("Ngọc", 10), ("Thu", 6), ("Thanh", 5), ("Minh", 5),
                        ("Phương", 5), ("Bảo", 5), ("Khánh", 4), ("Hải", 3), ("Quỳnh", 4),
                        ("Hoài", 3), ("Mỹ", 4), ("Diệu", 3), ("Hồng", 3), ("Kim", 3),
                        ("Như", 3)),
}  # fmt: skip
_SECOND_MIDDLE = {
    "male": ("Minh", "Quốc", "Đức", "Anh", "Hoàng", "Tuấn", "Gia", "Nhật", "Thanh"),
    "female": ("Thu", "Ngọc", "Thanh", "Kim", "Minh", "Phương", "Bảo", "Hồng", "Diệu", "Mỹ"),
}
_GIVEN = {
    "male": ("Anh", "Hùng", "Dũng", "Tuấn", "Nam", "Minh", "Hải", "Long", "Sơn", "Quân",
             "Huy", "Thắng", "Cường", "Phong", "Bình", "Đức", "Hiếu", "Trung", "Khoa", "Tùng",
             "Đạt", "Thành", "Hoàng", "Việt", "Phúc", "Kiên", "Lâm", "Tú", "Vinh", "Hòa",
             "Tài", "Lợi", "Nghĩa", "Quang", "Khánh", "Thịnh", "Toàn", "Hưng", "Hào", "Hậu",
             "Lộc", "Phát", "Tân", "Tiến", "Trí", "Bảo", "Duy", "Chiến", "Thái", "Khải",
             "Nhân", "Công"),
    "female": ("Anh", "Linh", "Hương", "Lan", "Hoa", "Hằng", "Trang", "Thảo", "Ngọc", "Hà",
               "Mai", "Nhung", "Yến", "Huyền", "Phương", "Thủy", "Nga", "Oanh", "Vy", "Quỳnh",
               "Trâm", "Giang", "Hạnh", "Dung", "Loan", "Xuân", "Tuyết", "Nhi", "Châu",
               "Hiền", "Thu", "Vân", "Liên", "Hồng", "Ly", "My", "Thư", "Uyên", "Tâm", "Chi",
               "Nhàn", "Hân", "Ánh", "Duyên", "Ngân", "Diệp", "Thơ", "Lệ", "Bích", "Đào"),
}  # fmt: skip

# (occupation, weight aged 18-25, 26-64, 65+, usual priority group, insurance object code)
_OCCUPATIONS: tuple[tuple[str, float, float, float, str, str], ...] = (
    ("Công nhân", 10, 16, 0, "G13", "DN"), ("Nhân viên văn phòng", 8, 12, 0.5, "G13", "DN"),
    ("Kỹ sư", 2, 4, 0.2, "G13", "DN"), ("Tiểu thương", 1, 4, 1, "G13", "GD"),
    ("Kinh doanh tự do", 3, 8, 2, "G15", "GD"), ("Lao động tự do", 6, 9, 2, "G15", "GD"),
    ("Nông dân", 3, 9, 6, "G10", "GD"), ("Ngư dân", 0.5, 1, 0.3, "G10", "GD"),
    ("Nội trợ", 1, 5, 8, "G10", "GD"), ("Giáo viên", 0.3, 4, 0.3, "G08", "HC"),
    ("Sinh viên", 30, 0.5, 0, "G08", "SV"), ("Cán bộ, công chức", 0.5, 4, 0.2, "G08", "HC"),
    ("Bác sĩ", 0.1, 1.2, 0.2, "G01", "HC"), ("Điều dưỡng", 0.6, 1.2, 0.1, "G01", "HC"),
    ("Dược sĩ", 0.3, 0.6, 0.1, "G01", "DN"),
    ("Tình nguyện viên phòng, chống dịch", 1.5, 0.5, 0.1, "G02", "GD"),
    ("Phóng viên", 0.2, 0.4, 0.05, "G02", "DN"), ("Quân nhân", 1.5, 0.8, 0, "G03", "QN"),
    ("Công an", 0.8, 0.8, 0, "G04", "CA"), ("Cán bộ ngoại giao", 0.05, 0.15, 0.02, "G05", "HC"),
    ("Cán bộ hải quan", 0.05, 0.25, 0, "G06", "HC"), ("Tài xế", 1, 4, 0.3, "G07", "DN"),
    ("Nhân viên hàng không", 0.2, 0.3, 0, "G07", "DN"),
    ("Hướng dẫn viên du lịch", 0.3, 0.3, 0, "G07", "DN"),
    ("Nhân viên điện lực", 0.2, 0.5, 0, "G07", "DN"), ("Du học sinh", 1, 0.1, 0, "G12", "SV"),
    ("Lao động xuất khẩu", 1, 1, 0, "G12", "GD"),
    ("Chức sắc tôn giáo", 0.02, 0.2, 0.2, "G14", "GD"), ("Hưu trí", 0, 0.8, 60, "G09", "HT"),
)  # fmt: skip
_FALLBACK_GROUPS = (("G10", 50.0), ("G11", 30.0), ("G16", 20.0))
# Benefit level on the card (1-5): armed forces and poor households are covered in full,
# pensioners at 95 %, most people at 80 % (level 4).
_INSURANCE_LEVEL = {"QN": "1", "CA": "1", "HN": "2", "HT": "3"}

# Age bands (inclusive years) and their share of launch-day registrations.
_AGE_BANDS = ((18, 29, 14.0), (30, 39, 16.0), (40, 49, 18.0), (50, 64, 27.0),
              (65, 74, 17.0), (75, 90, 8.0))  # fmt: skip

_STREETS = (
    "Lê Lợi", "Trần Hưng Đạo", "Nguyễn Trãi", "Hai Bà Trưng", "Quang Trung", "Lý Thường Kiệt",
    "Nguyễn Huệ", "Hùng Vương", "Lê Duẩn", "Điện Biên Phủ", "Phan Chu Trinh", "Phan Bội Châu",
    "Nguyễn Du", "Trần Phú", "Lê Lai", "Ngô Quyền", "Bà Triệu", "Nguyễn Văn Cừ", "Võ Thị Sáu",
    "Cách Mạng Tháng Tám", "Nguyễn Thị Minh Khai", "Lê Thánh Tông", "Trường Chinh",
    "Hoàng Văn Thụ", "Nguyễn Chí Thanh", "Phạm Văn Đồng", "Tôn Đức Thắng", "Lạc Long Quân",
    "Âu Cơ", "Nguyễn Đình Chiểu", "Lý Tự Trọng", "Chu Văn An", "Lê Hồng Phong",
    "Nguyễn Thái Học", "Trần Quang Khải", "Đinh Tiên Hoàng", "Yersin", "Pasteur",
)  # fmt: skip
_HAMLETS_NORTH = ("Đông", "Tây", "Nam", "Bắc", "Trung", "Thượng", "Hạ", "Đoài", "Tân Lập",
                  "Đồng Tâm", "Quyết Tiến", "Thống Nhất", "Hòa Bình", "An Phú")  # fmt: skip
_HAMLETS_SOUTH = ("Bình An", "Tân Lợi", "Mỹ Phước", "Long Hòa", "Phú Thạnh", "Thạnh Lợi",
                  "An Thới", "Tân Hòa", "Hòa Lợi", "Phước Lộc", "Mỹ Hưng",
                  "Vĩnh Thạnh")  # fmt: skip
_CENTRAL_FROM = 38  # Thanh Hóa
_XOM_PROVINCES = frozenset({40, 42})  # Nghệ An and Hà Tĩnh say "xóm" like the north
_SOUTH_FROM = 75  # Đồng Nai on: ấp and hẻm
_KIET_PROVINCES = frozenset({46, 48})  # Huế and Đà Nẵng say "kiệt" for an alley

_EMAIL_DOMAINS = (("gmail.com", 85.0), ("yahoo.com", 6.0), ("outlook.com", 4.0),
                  ("icloud.com", 3.0), ("hotmail.com", 2.0))  # fmt: skip
_SESSIONS = (("morning", 55.0), ("afternoon", 35.0), ("evening", 10.0))
_PASSPORT_LETTERS = (("C", 80.0), ("B", 10.0), ("N", 10.0))
_CMND_FIRST = (("0", 30.0), ("1", 25.0), ("2", 25.0), ("3", 20.0))

# Spellings of one national number "0912345678", as people type them, and how often.
_PhoneFormat = Callable[[str], str]
_PHONE_FORMATS: tuple[tuple[_PhoneFormat, float], ...] = (
    (lambda n: n, 60.0),  # 0912345678
    (lambda n: f"+84{n[1:]}", 10.0),  # +84912345678
    (lambda n: f"+84 {n[1:4]} {n[4:7]} {n[7:]}", 8.0),  # +84 912 345 678
    (lambda n: f"84{n[1:]}", 7.0),  # 84912345678
    (lambda n: f"{n[:4]} {n[4:7]} {n[7:]}", 6.0),  # 0912 345 678
    (lambda n: f"{n[:4]}.{n[4:7]}.{n[7:]}", 5.0),  # 0912.345.678
    (lambda n: f"(+84) {n[1:4]}-{n[4:7]}-{n[7:]}", 4.0),  # (+84) 912-345-678
)
_NOT_PHONES = ("không có", "N/A", "0912", "09123456789012", "chưa có số", "0000000000")
_INVALID_DEFECTS = (
    "numeric_id", "nul_in_name", "future_birth", "february_31", "not_a_phone",
    "foreign_ward", "cccd_gender", "no_consent", "unknown_site", "malformed_json",
    "id_length",
)  # fmt: skip
_ID_SEPARATORS = str.maketrans("", "", " .-")


def phone_spellings(national: str) -> tuple[str, ...]:
    """Every spelling the generator uses for a 10-digit national number ("0912345678")."""
    return tuple(spell(national) for spell, _ in _PHONE_FORMATS)


def _national_from(phone: str) -> str:
    digits = "".join(ch for ch in phone if ch.isdigit())
    return "0" + digits[2:] if digits.startswith("84") and len(digits) == 11 else digits


def identity_of(body: Mapping[str, Any]) -> str:
    """The reconciliation label of a body's identity document, "type:NUMBER", with the
    separators people type (spaces, dots, hyphens) removed as the gateway removes them."""
    doc = body["id_document"]
    return (
        f"{str(doc['type']).strip().lower()}:{str(doc['number']).translate(_ID_SEPARATORS).upper()}"
    )


def _ascii(text: str) -> str:
    bare = "".join(ch for ch in unicodedata.normalize("NFD", text) if not unicodedata.combining(ch))
    return bare.replace("đ", "d").replace("Đ", "D").lower()


def _copy_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """Copy deep enough that changing a nested field leaves the original alone."""
    copy = dict(body)
    for key in ("id_document", "address", "screening"):
        if isinstance(copy.get(key), dict):
            copy[key] = dict(copy[key])
    return copy


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a year that has none
        return day.replace(year=day.year - years, day=28)


# --- the generator ------------------------------------------------------------------


class Generator:
    """Deterministic stream of realistic registration bodies for one seed.

    ``stream``/``streams`` split the serial-number space so several generators (Locust
    users, distributed workers) issue disjoint identity documents: give each a distinct
    ``stream`` in ``range(streams)``. One generator alone never repeats a document; it
    remembers every one it issued (about 60 bytes each).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        sites: Sequence[str] | None = None,
        priority_groups: Sequence[str] | None = None,
        today: date | None = None,
        min_age_years: int = c.DEFAULT_MIN_AGE_YEARS,
        stream: int = 0,
        streams: int = 1,
    ) -> None:
        if not 0 < min_age_years <= MAX_AGE:
            raise ValueError(f"min_age_years must be in 1..{MAX_AGE}")
        if not 0 <= stream < streams:
            raise ValueError("stream must be in range(streams)")
        self._rng = random.Random(seed)
        self._rand = self._rng.random
        self._div = _divisions()
        self._stream, self._streams = stream, streams

        if sites is None:
            site_rows = _default_sites()
        else:
            site_rows = tuple((s, m[1] if (m := _SITE_PROVINCE_RE.match(s)) else "") for s in sites)
        if not site_rows:
            raise ValueError("at least one site is needed")
        self._sites = tuple(s for s, _ in site_rows)
        self._site_set = frozenset(self._sites)
        by_province: dict[str, list[str]] = {}
        for site_id, province in site_rows:
            by_province.setdefault(province, []).append(site_id)
        self._sites_in = {p: tuple(v) for p, v in by_province.items()}

        groups = _default_priority_groups() if priority_groups is None else tuple(priority_groups)
        if not groups:
            raise ValueError("at least one priority group is needed")
        self._groups, self._group_set = groups, frozenset(groups)

        # Birth dates as day ordinals, band edges in calendar years so that someone drawn
        # as 18 is 18 by a validator's reckoning on `today`.
        today = today if today is not None else date.today()
        self._today_ord = today.toordinal()
        bands: list[tuple[tuple[int, int], float]] = []
        for low, high, weight in _AGE_BANDS:
            low = max(low, min_age_years)
            if low <= high:
                latest = _years_before(today, low).toordinal()
                earliest = _years_before(today, high + 1).toordinal() + 1
                bands.append(((earliest, latest - earliest + 1), weight))
        self._bands = _Weighted.of(bands)
        self._born_1980 = date(1980, 1, 1).toordinal()

        self._family = (_Weighted.of(_FAMILY_NORTH), _Weighted.of(_FAMILY_SOUTH))
        self._middle = {key: _Weighted.of(v) for key, v in _MIDDLE.items()}
        rows = [(o[0], o[4], o[5]) for o in _OCCUPATIONS]
        self._occupations = (  # for ages 18-25, 26-64, 65+
            _Weighted.of([(row, o[1]) for row, o in zip(rows, _OCCUPATIONS)]),
            _Weighted.of([(row, o[2]) for row, o in zip(rows, _OCCUPATIONS)]),
            _Weighted.of([(row, o[3]) for row, o in zip(rows, _OCCUPATIONS)]),
        )
        self._fallback_groups = _Weighted.of(_FALLBACK_GROUPS)
        self._email_domains = _Weighted.of(_EMAIL_DOMAINS)
        self._sessions = _Weighted.of(_SESSIONS)
        self._passport_letters = _Weighted.of(_PASSPORT_LETTERS)
        self._cmnd_first = _Weighted.of(_CMND_FIRST)
        self._phone_formats = _Weighted.of(_PHONE_FORMATS)
        self._phone_heads = _phone_heads()
        self._mobile = _mobile_pattern()
        tokens = {
            t for table in (_FAMILY_NORTH, _FAMILY_SOUTH, *_MIDDLE.values()) for t, _ in table
        }
        tokens.update(*_SECOND_MIDDLE.values(), *_GIVEN.values())
        self._ascii = {t: _ascii(t) for t in tokens}

        self._issued: set[int] = set()
        self._recent_phones: list[str] = []
        self._recent: list[Submission] = []  # ring, see _remember
        self._recent_count = 0

    # -- pieces --------------------------------------------------------------------------

    def _int(self, n: int) -> int:
        """Uniform in range(n); random.randrange costs several times more."""
        return int(self._rand() * n)

    def _phone(self) -> str:
        """A valid Vietnamese mobile in national form, "0912345678"."""
        rand = self._rand
        while True:
            national = f"{self._phone_heads.pick(rand)}{int(rand() * 100_000):05d}"
            # The heads table guarantees it already; this re-check against the library's
            # metadata costs under a microsecond.
            if self._mobile.fullmatch(national[1:]):
                return national

    def _serial(self, span: int) -> int:
        # Disjoint serials per stream: serial % streams == stream.
        return self._int(span // self._streams) * self._streams + self._stream

    def _issue(self, key: int) -> bool:
        if key in self._issued:
            return False
        self._issued.add(key)
        return True

    def _id_document(
        self, doc_type: str | None, province: str, female: bool, year: int
    ) -> dict[str, str]:
        rand = self._rand
        if doc_type is None:
            roll = rand()
            doc_type = "cccd" if roll < 0.90 else "cmnd" if roll < 0.985 else "passport"
        if doc_type == "cccd":
            div = self._div
            local = div.legacy_in.get(province) or div.legacy_codes
            # Digits 4-6 as a number: gender/century digit, then the year's last two.
            cohort = (2 * ((year - 1900) // 100) + female) * 100 + year % 100
            streams, span = self._streams, 1_000_000 // self._streams
            for _ in range(8):
                # Most people were registered at birth in (one of the old provinces that
                # make up) the province they live in; the rest moved.
                old = _one(local if rand() < 0.85 else div.legacy_codes, rand)
                serial = int(rand() * span) * streams + self._stream
                value = (int(old) * 1000 + cohort) * 1_000_000 + serial
                if value not in self._issued:
                    self._issued.add(value)
                    return {"type": "cccd", "number": f"{value:012d}"}
            doc_type = "cmnd"  # a crowded birth cohort: fall back rather than loop
        if doc_type == "cmnd":
            for _ in range(64):
                number = f"{self._cmnd_first.pick(rand)}{self._serial(100_000_000):08d}"
                if self._issue(10**13 + int(number)):
                    return {"type": "cmnd", "number": number}
        for _ in range(64):
            letter, digits = self._passport_letters.pick(rand), self._serial(10_000_000)
            if self._issue(2 * 10**13 + ord(letter) * 10**7 + digits):
                return {"type": "passport", "number": f"{letter}{digits:07d}"}
        raise RuntimeError("identity numbers exhausted: too many streams for this many people")

    def _street(self, province: str, ward: str) -> str:
        rand, code = self._rand, int(province)
        if ward in self._div.rural:
            if code >= _SOUTH_FROM:
                return f"Ấp {_one(_HAMLETS_SOUTH, rand) if rand() < 0.6 else 1 + self._int(12)}"
            if rand() < 0.5:
                return f"Thôn {_one(_HAMLETS_NORTH, rand)}"
            word = "Xóm" if code < _CENTRAL_FROM or code in _XOM_PROVINCES else "Thôn"
            return f"{word} {1 + self._int(15)}"
        street, n, alley, roll = (
            _one(_STREETS, rand),
            1 + self._int(350),
            1 + self._int(200),
            rand(),
        )
        if roll < 0.5:
            return f"Số {n} {street}"
        if code >= _SOUTH_FROM:
            return f"{n}/{alley} {street}" if roll < 0.8 else f"{n} hẻm {alley} {street}"
        if code in _KIET_PROVINCES:
            return f"{n} kiệt {alley} {street}"
        if code < _CENTRAL_FROM:
            return (
                f"Số {n}, ngõ {alley} {street}" if roll < 0.9 else f"Tổ {alley % 40 + 1}, {street}"
            )
        return f"{n}/{alley} {street}"

    def _email(self, family: str, given: str, year: int) -> str:
        g, f = self._ascii[given], self._ascii[family]
        local = (f"{g}{f}{year % 100:02d}", f"{g}.{f}", f"{f}{g}{1 + self._int(999)}", f"{g}{year}")
        return f"{_one(local, self._rand)}@{self._email_domains.pick(self._rand)}"

    def _group(self, age: int, usual: str, chronic: bool) -> str:
        rand = self._rand
        if (age >= 65 and rand() < 0.85) or (chronic and rand() < 0.5):
            code = "G09"
        else:
            code = usual if rand() < 0.85 else self._fallback_groups.pick(rand)
        return code if code in self._group_set else _one(self._groups, rand)

    def _site(self, province: str) -> str:
        local = self._sites_in.get(province)
        return _one(local if local and self._rand() < 0.9 else self._sites, self._rand)

    # -- one person ----------------------------------------------------------------------

    def person(self) -> dict[str, Any]:
        """One valid request body, as a client sends it (a new person every call)."""
        return self._person(None, False)

    def _person(self, doc_type: str | None, binary_gender: bool) -> dict[str, Any]:
        rand, div = self._rand, self._div

        roll = rand()
        gender = "female" if roll < 0.507 else "male" if roll < 0.997 or binary_gender else "other"
        # Names, middle names and the CCCD digit know only two genders.
        name_gender = gender if gender != "other" else ("female" if rand() < 0.5 else "male")
        female = name_gender == "female"

        first_day, days = self._bands.pick(rand)
        born_ord = first_day + int(rand() * days)
        born = date.fromordinal(born_ord)
        age = (self._today_ord - born_ord) // 365  # close enough to weigh occupations

        province = div.provinces.pick(rand)
        ward = _one(div.wards[province], rand)

        family = self._family[int(province) >= _SOUTHERN_NAMES_FROM].pick(rand)
        middle = self._middle[(name_gender, born_ord < self._born_1980)].pick(rand)
        given = _one(_GIVEN[name_gender], rand)
        if rand() < 0.2:
            second = _one(_SECOND_MIDDLE[name_gender], rand)
            if second != middle and second != given:
                middle = f"{middle} {second}"
        full_name = f"{family} {middle} {given}"

        occupation, usual_group, insurance_object = self._occupations[
            0 if age < 26 else 1 if age < 65 else 2
        ].pick(rand)
        chronic = rand() < (0.45 if age >= 65 else 0.2 if age >= 45 else 0.06)

        recent = self._recent_phones
        if recent and rand() < 0.02:
            national = _one(recent, rand)
        else:
            national = self._phone()
            if len(recent) < 256:
                recent.append(national)
            else:
                recent[self._int(256)] = national

        body: dict[str, Any] = {
            "full_name": full_name,
            "date_of_birth": born.isoformat(),
            "gender": gender,
            "phone": self._phone_formats.pick(rand)(national),
            "id_document": self._id_document(doc_type, province, female, born.year),
        }
        if rand() < 0.55:
            card_province = _one(div.legacy_in.get(province) or div.legacy_codes, rand)
            social = f"{card_province}{self._int(100_000_000):08d}"
            if rand() < 0.75:
                level = _INSURANCE_LEVEL.get(insurance_object, "4")
                social = f"{insurance_object}{level}{card_province}{social}"
            body["health_insurance_number"] = social
        if rand() < 0.25:
            body["email"] = self._email(family, given, born.year)
        body["address"] = {
            "province_code": province,
            "ward_code": ward,
            "street": self._street(province, ward),
        }
        body["priority_group"] = self._group(age, usual_group, chronic)
        body["occupation"] = occupation
        body["site_id"] = self._site(province)
        if rand() < 0.55:
            body["preferred_date"] = date.fromordinal(
                self._today_ord + 1 + self._int(30)
            ).isoformat()
        if rand() < 0.6:
            body["preferred_session"] = self._sessions.pick(rand)
        if rand() < 0.75:
            body["screening"] = {
                "fever_or_cough_14d": rand() < 0.02,
                "covid_contact_14d": rand() < 0.01,
                "severe_allergy_history": rand() < 0.03,
                "previous_vaccine_reaction": rand() < 0.02,
                "pregnant": female and 18 <= age <= 45 and rand() < 0.04,
                "immunocompromised": rand() < 0.01,
                "on_anticoagulants": rand() < (0.08 if age >= 60 else 0.01),
                "chronic_disease": chronic,
            }
        body["consent"] = True
        body["channel"] = "web" if rand() < 0.55 else "app"
        if rand() < 0.07:
            # Decomposed Vietnamese, as some phone keyboards send it.
            nfd = unicodedata.normalize
            body["full_name"] = nfd("NFD", full_name)
            body["address"]["street"] = nfd("NFD", body["address"]["street"])
            body["occupation"] = nfd("NFD", occupation)
        return body

    # -- variants of one person ----------------------------------------------------------

    def respelled(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The same person and content in another spelling: the name in the other Unicode
        form (sometimes with stray spaces), another spelling of the same phone number, and
        the identity number with spaces in it."""
        rand = self._rand
        new = _copy_body(body)
        name = str(body["full_name"])
        if unicodedata.is_normalized("NFC", name) and not name.isascii():
            name = unicodedata.normalize("NFD", name)
        else:
            name = unicodedata.normalize("NFC", name)
        if rand() < 0.3:
            name = f" {name.replace(' ', '  ', 1)} "
        new["full_name"] = name

        current = str(body["phone"])
        new["phone"] = _one(
            [s for s in phone_spellings(_national_from(current)) if s != current], rand
        )

        doc = new["id_document"]
        number = str(doc["number"]).translate(_ID_SEPARATORS)
        if doc["type"] == "passport":
            doc["number"] = f"{number[:1]} {number[1:]}"
        elif doc["type"] == "cccd" and rand() < 0.5:
            doc["number"] = f"{number[:4]} {number[4:8]} {number[8:]}"
        else:
            doc["number"] = f"{number[:3]} {number[3:6]} {number[6:]}"
        return new

    def conflicting(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The same identity document, spelt the same, with different content: another
        site, another phone number or another street."""
        rand = self._rand
        new = _copy_body(body)
        roll = rand()
        if roll < 0.5 and len(self._sites) > 1:
            province = str(body["address"]["province_code"])
            pool = [s for s in self._sites_in.get(province, ()) if s != body["site_id"]]
            new["site_id"] = _one(pool or [s for s in self._sites if s != body["site_id"]], rand)
        elif roll < 0.85:
            old = _national_from(str(body["phone"]))
            national = self._phone()
            while national == old:
                national = self._phone()
            new["phone"] = self._phone_formats.pick(rand)(national)
        else:
            street = unicodedata.normalize("NFC", str(body["address"]["street"]))
            candidate = self._street(body["address"]["province_code"], body["address"]["ward_code"])
            new["address"]["street"] = candidate if candidate != street else f"{street} (nhà trọ)"
        return new

    def invalid(self) -> tuple[dict[str, Any] | bytes, str]:
        """A body with exactly one defect, and the field path the server must name."""
        body, path, _identity, _channel = self._invalid()
        return body, path

    def _invalid(self) -> tuple[dict[str, Any] | bytes, str, str, str]:
        rand = self._rand
        defect = _one(_INVALID_DEFECTS, rand)
        # A defect must not also trip the CCCD cross-checks: a future birth date goes on a
        # document that encodes none; the CCCD-specific defects start from a CCCD.
        doc_type = {
            "future_birth": _one(("cmnd", "passport"), rand),
            "numeric_id": "cccd",
            "cccd_gender": "cccd",
            "id_length": _one(("cccd", "cmnd"), rand),
        }.get(defect)
        body = self._person(doc_type, binary_gender=True)
        identity, channel = identity_of(body), str(body["channel"])
        doc, address = body["id_document"], body["address"]
        path = "id_document.number"
        if defect == "numeric_id":
            doc["number"] = int(doc["number"])  # a JSON number: the leading zero is gone
        elif defect == "nul_in_name":
            name = body["full_name"]
            cut = 1 + self._int(len(name) - 1)
            body["full_name"], path = f"{name[:cut]}\x00{name[cut:]}", "full_name"
        elif defect == "future_birth":
            born = date.fromordinal(self._today_ord + 1 + self._int(3650))
            body["date_of_birth"], path = born.isoformat(), "date_of_birth"
        elif defect == "february_31":
            body["date_of_birth"], path = f"{body['date_of_birth'][:4]}-02-31", "date_of_birth"
        elif defect == "not_a_phone":
            body["phone"], path = _one(_NOT_PHONES, rand), "phone"
        elif defect == "foreign_ward":
            other = _one([p for p in self._div.codes if p != address["province_code"]], rand)
            address["ward_code"], path = _one(self._div.wards[other], rand), "address.ward_code"
        elif defect == "cccd_gender":
            number = doc["number"]
            doc["number"] = f"{number[:3]}{int(number[3]) ^ 1}{number[4:]}"  # same century
        elif defect == "no_consent":
            del body["consent"]
            path = "consent"
        elif defect == "unknown_site":
            site = body["site_id"]
            while site in self._site_set:
                site = f"VN-{self._int(100):02d}-{self._int(100_000):05d}-TYT"
            body["site_id"], path = site, "site_id"
        elif defect == "malformed_json":
            raw = json.dumps(body, ensure_ascii=False).encode()
            if rand() < 0.5:
                raw = raw[: len(raw) // 2 + self._int(len(raw) // 2 - 1)]  # cut off mid-flight
            else:
                raw = raw[:-1] + b",}"  # trailing comma
            return raw, "body", identity, channel
        else:  # id_length: one digit too few or too many
            number = doc["number"]
            doc["number"] = number[:-1] if rand() < 0.5 else f"{number}{self._int(10)}"
        return body, path, identity, channel

    # -- a stream of submissions ---------------------------------------------------------

    def _key(self, channel: str) -> str | None:
        # The app always sends a key; web forms about half the time.
        if self._rand() < (0.9 if channel == "app" else 0.5):
            return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        return None

    def _remember(self, submission: Submission) -> None:
        if len(self._recent) < _RECENT_MAX:
            self._recent.append(submission)
        else:
            self._recent[self._recent_count % _RECENT_MAX] = submission
        self._recent_count += 1

    def _earlier(self) -> Submission | None:
        """A remembered "new" submission at least REFERENCE_GAP places back, or None."""
        oldest = max(0, self._recent_count - _RECENT_MAX)
        span = self._recent_count - REFERENCE_GAP - oldest
        if span <= 0:
            return None
        return self._recent[(oldest + self._int(span)) % _RECENT_MAX]

    def submissions(
        self,
        n: int,
        *,
        retry_share: float = 0.05,
        respell_share: float = 0.03,
        conflict_share: float = 0.02,
        invalid_share: float = 0.03,
    ) -> Iterator[Submission]:
        """``n`` submissions: new people, plus the given shares of exact retries, respelled
        and conflicting resubmissions of earlier people, and invalid bodies.

        A kind that needs an earlier submission and has none yet (within the first
        REFERENCE_GAP) is owed and emitted as soon as it can be, so the shares hold.
        """
        shares = (retry_share, respell_share, conflict_share, invalid_share)
        if any(s < 0 for s in shares) or sum(shares) > 1:
            raise ValueError("shares must be non-negative and add up to at most 1")
        kinds = _Weighted.of(
            list(zip((KIND_RETRY, KIND_RESPELLED, KIND_CONFLICT, KIND_INVALID), shares))
            + [(KIND_NEW, 1.0 - sum(shares))]
        )
        owed: list[str] = []
        for _ in range(n):
            kind = kinds.pick(self._rand)
            original: Submission | None = None
            if kind == KIND_NEW and owed:
                original = self._earlier()
                if original is not None:
                    kind = owed.pop()
            elif kind in _DERIVED:
                original = self._earlier()
                if original is None:
                    owed.append(kind)
                    kind = KIND_NEW
            if original is not None and kind in _DERIVED:
                yield self._derived(kind, original)
            elif kind == KIND_INVALID:
                body, path, identity, channel = self._invalid()
                yield Submission(KIND_INVALID, body, channel, self._key(channel), path, identity)
            else:
                body = self.person()
                channel = str(body["channel"])
                new = Submission(
                    KIND_NEW, body, channel, self._key(channel), None, identity_of(body)
                )
                self._remember(new)
                yield new

    def _derived(self, kind: str, original: Submission) -> Submission:
        if kind == KIND_RETRY or not isinstance(original.body, dict):
            # Byte-for-byte the same request, key included: a client that timed out.
            return Submission(KIND_RETRY, original.body, original.channel,
                              original.idempotency_key, None, original.identity)  # fmt: skip
        body = (
            self.respelled(original.body)
            if kind == KIND_RESPELLED
            else self.conflicting(original.body)
        )
        # The same channel: the channel is not content, but keeping it makes the expected
        # answer independent of that rule. A fresh key: another request, not a replay.
        return Submission(kind, body, original.channel, self._key(original.channel), None,
                          original.identity)  # fmt: skip
