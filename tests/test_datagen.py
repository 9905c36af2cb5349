"""The data generator and the reference CSVs: realistic, consistent, deterministic.

Fast and server-free. Checks go to the sources themselves — ``vietnam_provinces`` for
wards, the SQLite file of ``vietnamadminunits`` for the pre-2025 province codes, and
``phonenumbers``' full parser for phones — not to the generator's own tables.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import re
import sqlite3
import subprocess
import sys
import unicodedata
from collections import Counter
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from vietnam_provinces import Province, Ward

from gateway import constants as c
from gateway.datagen import Generator, Submission, identity_of, phone_spellings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "gateway" / "data"
TODAY = date.today()
TOP_LEVEL = {
    "full_name", "date_of_birth", "gender", "phone", "id_document", "health_insurance_number",
    "email", "address", "priority_group", "occupation", "site_id", "preferred_date",
    "preferred_session", "screening", "consent", "channel",
}  # fmt: skip
REQUIRED = TOP_LEVEL - {
    "health_insurance_number", "email", "preferred_date", "preferred_session", "screening",
}  # fmt: skip
SITE_ID_RE = re.compile(r"^[A-Z0-9-]{3,32}$")
INSURANCE_RE = re.compile(r"^(?:[A-Z]{2}[1-5][0-9]{2}[0-9]{10}|[0-9]{10})$")
SEPARATORS = str.maketrans("", "", " .-")


# --- independent reference data ---------------------------------------------------


def _ward_owner() -> dict[str, str]:
    owner = {}
    for province in Province.iter_all():
        for ward in Ward.iter_by_province(province.code):
            owner[f"{ward.code.value:05d}"] = f"{province.code.value:02d}"
    return owner


WARD_OWNER = _ward_owner()
PROVINCES = set(WARD_OWNER.values())


def _legacy_codes() -> set[str]:
    spec = importlib.util.find_spec("vietnamadminunits")
    assert spec is not None and spec.submodule_search_locations
    db_path = Path(next(iter(spec.submodule_search_locations))) / "data" / "dataset.db"
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT DISTINCT provinceCode FROM admin_units_legacy").fetchall()
    return {str(code).zfill(2) for (code,) in rows}


LEGACY = _legacy_codes()


def _read_csv(name: str) -> tuple[list[str], list[dict[str, str]]]:
    text = (DATA / name).read_text(encoding="utf-8")
    # Comment lines ("#") are allowed, and skipped as gateway.store skips them.
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    return list(reader.fieldnames or []), list(reader)


SITES = {row["site_id"]: row for row in _read_csv("sites_dev.csv")[1]}
GROUPS = {row["code"] for row in _read_csv("priority_groups.csv")[1]}


def _e164(phone: str) -> str | None:
    """The full parser's verdict: E.164 of a valid Vietnamese mobile, else None."""
    try:
        number = phonenumbers.parse(phone, "VN")
    except phonenumbers.NumberParseException:
        return None
    if number.country_code != 84 or not phonenumbers.is_valid_number(number):
        return None
    if phonenumbers.number_type(number) != PhoneNumberType.MOBILE:
        return None
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def _text(value: str) -> str:
    return " ".join(unicodedata.normalize("NFC", value).split())


def normalised(body: Mapping[str, Any]) -> dict[str, Any]:
    """Content as the design says it is compared: NFC with whitespace collapsed, phones
    in E.164, identity numbers without separators; the channel is not content."""
    out = dict(body)
    out.pop("channel", None)
    out["full_name"] = _text(body["full_name"])
    out["occupation"] = _text(body["occupation"])
    out["phone"] = _e164(body["phone"])
    out["id_document"] = {
        "type": body["id_document"]["type"],
        "number": str(body["id_document"]["number"]).translate(SEPARATORS).upper(),
    }
    out["address"] = dict(body["address"], street=_text(body["address"]["street"]))
    return out


def _age(born: date, today: date = TODAY) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


# --- a shared sample -----------------------------------------------------------------


@pytest.fixture(scope="module")
def people() -> list[dict[str, Any]]:
    generator = Generator(11, today=TODAY)
    return [generator.person() for _ in range(3000)]


@pytest.fixture(scope="module")
def stream() -> list[Submission]:
    return list(Generator(23, today=TODAY).submissions(2000))


# --- determinism and isolation -----------------------------------------------------


def test_same_seed_gives_same_submissions() -> None:
    day = date(2025, 7, 1)
    first = list(Generator(7, today=day).submissions(400))
    again = list(Generator(7, today=day).submissions(400))
    other = list(Generator(8, today=day).submissions(400))
    assert first == again
    assert [s.body for s in first] != [s.body for s in other]


def test_generators_on_distinct_streams_issue_disjoint_documents() -> None:
    left = Generator(1, stream=0, streams=2)
    right = Generator(1, stream=1, streams=2)
    ids_left = {identity_of(left.person()) for _ in range(2000)}
    ids_right = {identity_of(right.person()) for _ in range(2000)}
    assert len(ids_left) == len(ids_right) == 2000
    assert not ids_left & ids_right


def test_a_generator_never_issues_a_document_twice_even_when_serials_are_scarce() -> None:
    # 50 000 streams leave 20 CCCD serials per stream for each birth cohort and old
    # province: collisions are frequent, and each must be caught and redrawn.
    generator = Generator(5, stream=49_999, streams=50_000)
    identities = [identity_of(generator.person()) for _ in range(3000)]
    assert len(set(identities)) == len(identities)
    cccd = [i for i in identities if i.startswith("cccd:")]
    assert all(int(i[-6:]) % 50_000 == 49_999 for i in cccd)


def test_datagen_imports_without_the_server_stack() -> None:
    script = (
        "import sys\n"
        "for name in ('aiohttp', 'redis', 'asyncpg', 'orjson', 'uvloop', 'prometheus_client'):\n"
        "    sys.modules[name] = None\n"
        "from gateway.datagen import Generator\n"
        "g = Generator(3)\n"
        "g.person(); list(g.submissions(50))\n"
        "assert 'vietnamadminunits' not in sys.modules, 'the heavy package was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- one person ----------------------------------------------------------------------


def test_bodies_have_the_contract_shape(people: list[dict[str, Any]]) -> None:
    for body in people:
        assert REQUIRED <= body.keys() <= TOP_LEVEL
        assert body["consent"] is True
        assert body["gender"] in c.GENDERS
        assert body["channel"] in c.CHANNELS
        assert body["id_document"]["type"] in c.ID_DOCUMENT_TYPES
        assert isinstance(body["id_document"]["number"], str)
        assert isinstance(body["phone"], str)
        assert body["priority_group"] in GROUPS
        assert body["site_id"] in SITES
        assert set(body["address"]) == {"province_code", "ward_code", "street"}
        assert body["address"]["street"].strip()
        if "preferred_date" in body:
            ahead = date.fromisoformat(body["preferred_date"]) - TODAY
            assert timedelta(days=1) <= ahead <= timedelta(days=30)
        if "preferred_session" in body:
            assert body["preferred_session"] in c.PREFERRED_SESSIONS
        if "screening" in body:
            assert tuple(body["screening"]) == c.SCREENING_QUESTIONS
            assert all(isinstance(v, bool) for v in body["screening"].values())
            if body["gender"] == "male":
                assert body["screening"]["pregnant"] is False
        if "health_insurance_number" in body:
            assert INSURANCE_RE.fullmatch(body["health_insurance_number"])
        if "email" in body:
            assert re.fullmatch(r"[a-z0-9.]+@[a-z]+\.[a-z]+", body["email"])


def test_people_are_adults_skewed_older(people: list[dict[str, Any]]) -> None:
    ages = [_age(date.fromisoformat(b["date_of_birth"])) for b in people]
    assert min(ages) >= c.DEFAULT_MIN_AGE_YEARS
    assert max(ages) <= 90
    assert sum(a >= 50 for a in ages) / len(ages) > 0.4
    assert sum(a >= 65 for a in ages) / len(ages) > 0.15


def test_minimum_age_is_configurable() -> None:
    generator = Generator(2, today=TODAY, min_age_years=60)
    ages = [_age(date.fromisoformat(generator.person()["date_of_birth"])) for _ in range(500)]
    assert min(ages) >= 60


def test_cccd_digits_agree_with_birth_year_gender_and_a_legacy_province(
    people: list[dict[str, Any]],
) -> None:
    checked = 0
    for body in people:
        doc = body["id_document"]
        if doc["type"] != "cccd":
            continue
        number, born = doc["number"], date.fromisoformat(body["date_of_birth"])
        assert re.fullmatch(r"[0-9]{12}", number)
        assert number[0] == "0" and number[1:3] in LEGACY
        digit = int(number[3])
        assert digit // 2 == (born.year - 1900) // 100  # century: 0/1 1900s, 2/3 2000s
        if body["gender"] in ("male", "female"):
            assert digit % 2 == (body["gender"] == "female")
        assert number[4:6] == f"{born.year % 100:02d}"
        checked += 1
    assert checked > 0.85 * len(people)


def test_most_people_hold_a_cccd_and_some_cmnd_or_passport(people: list[dict[str, Any]]) -> None:
    types = Counter(b["id_document"]["type"] for b in people)
    assert 0.86 < types["cccd"] / len(people) < 0.94
    assert types["cmnd"] > 0 and types["passport"] > 0
    for body in people:
        doc = body["id_document"]
        if doc["type"] == "cmnd":
            assert re.fullmatch(r"[0-9]{9}", doc["number"])
        elif doc["type"] == "passport":
            assert re.fullmatch(r"[A-Z][0-9]{7}", doc["number"])


def test_no_two_people_share_an_identity_document(people: list[dict[str, Any]]) -> None:
    identities = [identity_of(b) for b in people]
    assert len(set(identities)) == len(identities)


def test_ward_belongs_to_the_province_of_the_body(people: list[dict[str, Any]]) -> None:
    for body in people:
        address = body["address"]
        assert re.fullmatch(r"[0-9]{2}", address["province_code"])
        assert re.fullmatch(r"[0-9]{5}", address["ward_code"])
        assert WARD_OWNER[address["ward_code"]] == address["province_code"]
    assert len({b["address"]["province_code"] for b in people}) == len(PROVINCES)


def test_site_is_mostly_in_the_person_s_province(people: list[dict[str, Any]]) -> None:
    local = sum(
        SITES[b["site_id"]]["province_code"] == b["address"]["province_code"] for b in people
    )
    assert local / len(people) > 0.8


def test_every_valid_phone_is_a_vietnamese_mobile_for_phonenumbers(
    people: list[dict[str, Any]],
) -> None:
    spellings: Counter[str] = Counter()
    for body in people:
        assert _e164(body["phone"]) is not None, body["phone"]
        spellings[re.sub(r"[0-9]", "9", body["phone"])] += 1
    # Mixed spellings, as people type them.
    assert {"9999999999", "+99 999 999 999", "99999999999", "(+99) 999-999-999"} <= spellings.keys()
    assert spellings["9999999999"] < 0.8 * len(people)


def test_all_spellings_of_a_number_parse_to_one_e164(people: list[dict[str, Any]]) -> None:
    for body in people[:300]:
        digits = re.sub(r"[^0-9]", "", body["phone"])
        national = "0" + digits[2:] if len(digits) == 11 else digits
        forms = {_e164(spelling) for spelling in phone_spellings(national)}
        assert len(forms) == 1 and None not in forms


def test_names_follow_the_vietnamese_distribution(people: list[dict[str, Any]]) -> None:
    names = [unicodedata.normalize("NFC", b["full_name"]) for b in people]
    families = Counter(n.split()[0] for n in names)
    assert 0.30 < families["Nguyễn"] / len(names) < 0.46
    assert {"Trần", "Lê", "Phạm"} <= set(families)
    women = [n for n, b in zip(names, people) if b["gender"] == "female"]
    men = [n for n, b in zip(names, people) if b["gender"] == "male"]
    assert not any(" Văn " in n for n in women)
    assert not any(" Thị " in n for n in men)
    assert sum(" Thị " in n for n in women) / len(women) > 0.3
    assert all(3 <= len(n.split()) <= 4 for n in names)


def test_nfd_variants_are_nfd_and_normalise_to_the_nfc_form(
    people: list[dict[str, Any]],
) -> None:
    decomposed = [b for b in people if not unicodedata.is_normalized("NFC", b["full_name"])]
    assert 0.03 < len(decomposed) / len(people) < 0.12
    for body in decomposed:
        name = body["full_name"]
        assert unicodedata.is_normalized("NFD", name)
        composed = unicodedata.normalize("NFC", name)
        assert composed != name and unicodedata.normalize("NFD", composed) == name
        assert unicodedata.is_normalized("NFD", body["address"]["street"])
    for body in people:
        if body not in decomposed:
            assert unicodedata.is_normalized("NFC", body["full_name"])


# --- variants ------------------------------------------------------------------------


def test_respelled_body_normalises_to_the_same_content(people: list[dict[str, Any]]) -> None:
    generator = Generator(4, today=TODAY)
    for body in people[:500]:
        variant = generator.respelled(body)
        assert variant != body
        assert variant["phone"] != body["phone"]
        assert " " in variant["id_document"]["number"]
        assert normalised(variant) == normalised(body)
        assert identity_of(variant) == identity_of(body)


def test_respelled_does_not_touch_the_original(people: list[dict[str, Any]]) -> None:
    body = people[0]
    snapshot = json.loads(json.dumps(body))
    Generator(4).respelled(body)
    Generator(4).conflicting(body)
    assert body == snapshot


def test_conflicting_body_shares_the_document_and_differs_in_content(
    people: list[dict[str, Any]],
) -> None:
    generator = Generator(5, today=TODAY)
    changed: Counter[str] = Counter()
    for body in people[:500]:
        variant = generator.conflicting(body)
        assert variant["id_document"] == body["id_document"]
        before, after = normalised(body), normalised(variant)
        assert before != after
        changed.update(k for k in before if before[k] != after[k])
        assert _e164(variant["phone"]) is not None
        assert variant["site_id"] in SITES
    assert {"site_id", "phone", "address"} <= changed.keys()


# --- invalid bodies ------------------------------------------------------------------


def _defect_is_real(body: dict[str, Any] | bytes, field: str) -> bool:
    if field == "body":
        if not isinstance(body, bytes):
            return False
        try:
            json.loads(body)
        except ValueError:
            return True
        return False
    assert isinstance(body, dict)
    if field == "full_name":
        return "\x00" in str(body["full_name"])
    if field == "date_of_birth":
        raw = str(body["date_of_birth"])
        try:
            return date.fromisoformat(raw) > TODAY
        except ValueError:
            return raw.endswith("-02-31")
    if field == "phone":
        return _e164(str(body["phone"])) is None
    if field == "address.ward_code":
        address: dict[str, str] = body["address"]
        return WARD_OWNER[address["ward_code"]] != address["province_code"]
    if field == "consent":
        return "consent" not in body
    if field == "site_id":
        return body["site_id"] not in SITES
    if field == "id_document.number":
        number, kind = body["id_document"]["number"], body["id_document"]["type"]
        if not isinstance(number, str):
            return True
        if len(number) != {"cccd": 12, "cmnd": 9}.get(kind, len(number)):
            return True
        return kind == "cccd" and int(number[3]) % 2 != (str(body["gender"]) == "female")
    return False


def _other_fields_are_valid(body: dict[str, Any], field: str) -> None:
    """One defect each: everything the defect does not touch still holds."""
    if field != "phone":
        assert _e164(body["phone"]) is not None
    if field != "address.ward_code":
        assert WARD_OWNER[body["address"]["ward_code"]] == body["address"]["province_code"]
    if field != "site_id":
        assert body["site_id"] in SITES
    if field != "consent":
        assert body["consent"] is True
    if field != "full_name":
        assert "\x00" not in body["full_name"]
    if field not in ("date_of_birth", "id_document.number"):
        born = date.fromisoformat(body["date_of_birth"])
        assert _age(born) >= c.DEFAULT_MIN_AGE_YEARS
        doc = body["id_document"]
        if doc["type"] == "cccd":
            assert doc["number"][4:6] == f"{born.year % 100:02d}"
            assert int(doc["number"][3]) % 2 == (body["gender"] == "female")


def test_every_invalid_body_has_exactly_the_named_defect() -> None:
    generator = Generator(6, today=TODAY)
    fields: Counter[str] = Counter()
    for _ in range(600):
        body, field = generator.invalid()
        assert _defect_is_real(body, field), (field, body)
        if isinstance(body, dict):
            _other_fields_are_valid(body, field)
        fields[field] += 1
    assert set(fields) == {
        "id_document.number", "full_name", "date_of_birth", "phone", "address.ward_code",
        "consent", "site_id", "body",
    }  # fmt: skip


def test_invalid_bodies_pass_the_gateway_validator_only_where_named() -> None:
    """The generator and the gateway agree on the contract: valid bodies validate, and
    an invalid body is rejected naming exactly the field the generator says."""
    from gateway import validation
    sites, groups = set(SITES), set(GROUPS)

    class Reference:
        def has_site(self, site_id: str) -> bool:
            return site_id in sites

        def has_priority_group(self, code: str) -> bool:
            return code in groups

    fingerprints: dict[str, bytes] = {}
    for sub in Generator(12, today=TODAY).submissions(1500):
        if isinstance(sub.body, bytes):
            assert sub.invalid_field == "body"
            continue
        args = {"channel": sub.channel, "reference": Reference(), "today": TODAY,
                "min_age_years": c.DEFAULT_MIN_AGE_YEARS}  # fmt: skip
        if sub.kind == "invalid":
            with pytest.raises(validation.ValidationFailed) as failed:
                validation.validate(sub.body, **args)
            assert set(failed.value.errors) == {sub.invalid_field}
            continue
        registration = validation.validate(sub.body, **args)
        assert f"{registration.id_type}:{registration.id_number}" == sub.identity
        fingerprint = registration.fingerprint_material()
        if sub.kind == "new":
            fingerprints[sub.identity] = fingerprint
        elif sub.kind == "conflict":
            assert fingerprints[sub.identity] != fingerprint
        else:
            assert fingerprints[sub.identity] == fingerprint


# --- the stream of submissions -------------------------------------------------------


def _within(count: int, n: int, share: float) -> bool:
    return abs(count - n * share) <= 4 * math.sqrt(n * share * (1 - share)) + 3


def test_submission_shares_are_roughly_honoured(stream: list[Submission]) -> None:
    kinds = Counter(s.kind for s in stream)
    n = len(stream)
    assert n == 2000
    assert _within(kinds["retry"], n, 0.05)
    assert _within(kinds["respelled"], n, 0.03)
    assert _within(kinds["conflict"], n, 0.02)
    assert _within(kinds["invalid"], n, 0.03)
    assert _within(kinds["new"], n, 0.87)


def test_custom_shares_are_honoured() -> None:
    subs = list(Generator(9).submissions(2000, retry_share=0.2, respell_share=0,
                                         conflict_share=0, invalid_share=0.1))  # fmt: skip
    kinds = Counter(s.kind for s in subs)
    assert _within(kinds["retry"], 2000, 0.2)
    assert _within(kinds["invalid"], 2000, 0.1)
    assert kinds["respelled"] == kinds["conflict"] == 0


def test_new_submissions_never_repeat_an_identity(stream: list[Submission]) -> None:
    new = [s.identity for s in stream if s.kind == "new"]
    assert len(new) == len(set(new))


def test_resubmissions_refer_to_an_earlier_person(stream: list[Submission]) -> None:
    seen: dict[str, Submission] = {}
    for sub in stream:
        if sub.kind == "new":
            seen[sub.identity] = sub
            assert identity_of(sub.body) == sub.identity  # type: ignore[arg-type]
        elif sub.kind == "retry":
            original = seen[sub.identity]
            assert sub.body == original.body
            assert sub.idempotency_key == original.idempotency_key
            assert sub.channel == original.channel
        elif sub.kind in ("respelled", "conflict"):
            original = seen[sub.identity]
            assert isinstance(sub.body, dict) and isinstance(original.body, dict)
            assert sub.body != original.body
            assert sub.idempotency_key is None or sub.idempotency_key != original.idempotency_key
            same = normalised(sub.body) == normalised(original.body)
            assert same == (sub.kind == "respelled")
        else:
            assert sub.kind == "invalid" and sub.invalid_field


def test_submission_channel_matches_the_body(stream: list[Submission]) -> None:
    keyed = 0
    for sub in stream:
        assert sub.channel in c.CHANNELS
        if isinstance(sub.body, dict):
            assert sub.body["channel"] == sub.channel
        keyed += sub.idempotency_key is not None
    assert 0.4 < keyed / len(stream) < 0.9


# --- reference CSVs --------------------------------------------------------------------


def test_priority_groups_csv_parses_with_the_expected_columns() -> None:
    columns, rows = _read_csv("priority_groups.csv")
    assert columns == ["code", "rank", "name_vi", "name_en"]
    assert [r["code"] for r in rows] == [f"G{i:02d}" for i in range(1, 17)]
    assert sorted(int(r["rank"]) for r in rows) == list(range(1, 17))
    for row in rows:
        assert row["name_vi"].strip() and row["name_en"].strip()
        assert unicodedata.is_normalized("NFC", row["name_vi"])
        assert row["name_en"].isascii()
    assert any("65 tuổi" in r["name_vi"] for r in rows)


def test_sites_csv_refers_to_real_wards_of_its_province() -> None:
    columns, rows = _read_csv("sites_dev.csv")
    assert columns == ["site_id", "name", "province_code", "ward_code", "address", "daily_capacity"]
    assert 90 <= len(rows) <= 120
    assert len({r["site_id"] for r in rows}) == len(rows)
    per_province = Counter(r["province_code"] for r in rows)
    assert set(per_province) == PROVINCES and set(per_province.values()) == {3}
    for row in rows:
        assert SITE_ID_RE.fullmatch(row["site_id"])
        assert re.fullmatch(r"[0-9]{2}", row["province_code"])
        assert re.fullmatch(r"[0-9]{5}", row["ward_code"])
        assert WARD_OWNER[row["ward_code"]] == row["province_code"]
        assert 200 <= int(row["daily_capacity"]) <= 2000
        assert row["name"].startswith(("Trạm Y tế ", "Trung tâm Y tế khu vực ", "Bệnh viện "))
        assert unicodedata.is_normalized("NFC", row["name"])


def test_sites_csv_is_what_the_script_generates() -> None:
    spec = importlib.util.spec_from_file_location(
        "make_dev_sites", ROOT / "ops" / "make_dev_sites.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    try:
        spec.loader.exec_module(module)
        out = io.StringIO()
        module.write_sites(out)
    finally:
        del sys.modules[spec.name]
    assert out.getvalue() == (DATA / "sites_dev.csv").read_text(encoding="utf-8")


def test_generator_accepts_operator_reference_lists() -> None:
    generator = Generator(3, sites=["HOSPITAL-A", "VN-79-26791-TYT"], priority_groups=["P1", "P2"])
    for _ in range(200):
        body = generator.person()
        assert body["site_id"] in {"HOSPITAL-A", "VN-79-26791-TYT"}
        assert body["priority_group"] in {"P1", "P2"}
    _, field = Generator(3, sites=["HOSPITAL-A"]).invalid()
    assert field
