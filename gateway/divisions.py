"""Vietnam's administrative divisions, as the validator and the data generator need them.

Two sources, both maintained packages rather than copied lists:

* ``vietnam_provinces`` — the divisions in force since the 2025 reorganisation: 34
  provinces, wards directly under a province (no district level). Addresses are checked
  against these.
* ``vietnamadminunits`` — carries the pre-2025 table of 63 provinces. CCCD numbers
  issued before and after the reorganisation start with those old codes (zero-padded to
  three digits), so they are what the first three CCCD digits are checked against. Its
  ``__init__`` pulls heavy geo libraries, so only its bundled SQLite file is read, located
  through the import system without importing the package.

Everything is loaded lazily on first use and kept in module-level dicts and frozensets,
so the request path only does dictionary look-ups. Call :func:`preload` at start-up to
pay the loading cost (a few hundred milliseconds) before the first request.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from gateway.exceptions import ConfigurationError

_LEGACY_PACKAGE = "vietnamadminunits"
_LEGACY_DB = Path("data") / "dataset.db"
_LEGACY_QUERY = "SELECT DISTINCT provinceCode FROM admin_units_legacy"


class Division(NamedTuple):
    """A province or ward: a zero-padded code and its official Vietnamese name."""

    code: str
    name: str


# Filled once by _load_current() / _load_legacy(); None until then.
_PROVINCE_NAMES: dict[str, str] | None = None
_WARD_PROVINCE: dict[str, str] | None = None
_WARD_NAMES: dict[str, str] | None = None
_CCCD_PROVINCE_CODES: frozenset[str] | None = None
_lock = threading.Lock()


def _load_current() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    global _PROVINCE_NAMES, _WARD_PROVINCE, _WARD_NAMES
    if _PROVINCE_NAMES is None or _WARD_PROVINCE is None or _WARD_NAMES is None:
        with _lock:
            if _PROVINCE_NAMES is None or _WARD_PROVINCE is None or _WARD_NAMES is None:
                # Imported here: the package's lookup tables take ~0.2 s to import and
                # only processes that validate need them.
                from vietnam_provinces import Province, Ward

                provinces = {f"{int(p.code):02d}": p.name for p in Province.iter_all()}
                ward_province: dict[str, str] = {}
                ward_names: dict[str, str] = {}
                for ward in Ward.iter_all():
                    code = f"{int(ward.code):05d}"
                    ward_province[code] = f"{int(ward.province_code):02d}"
                    ward_names[code] = ward.name
                if not provinces or not ward_province:
                    raise ConfigurationError("vietnam_provinces returned no divisions")
                # Assign the complete tables last so a concurrent reader never sees a
                # half-built one.
                _WARD_NAMES = ward_names
                _WARD_PROVINCE = ward_province
                _PROVINCE_NAMES = provinces
    assert _PROVINCE_NAMES is not None and _WARD_PROVINCE is not None
    assert _WARD_NAMES is not None
    return _PROVINCE_NAMES, _WARD_PROVINCE, _WARD_NAMES


def _legacy_db_path() -> Path:
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec(_LEGACY_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / _LEGACY_DB
        if candidate.is_file():
            return candidate
    raise ConfigurationError(
        f"the {_LEGACY_PACKAGE} package (pre-2025 province codes) is not installed"
    )


def _load_legacy() -> frozenset[str]:
    global _CCCD_PROVINCE_CODES
    if _CCCD_PROVINCE_CODES is None:
        with _lock:
            if _CCCD_PROVINCE_CODES is None:
                uri = _legacy_db_path().resolve().as_uri() + "?mode=ro&immutable=1"
                try:
                    connection = sqlite3.connect(uri, uri=True)
                    try:
                        rows = connection.execute(_LEGACY_QUERY).fetchall()
                    finally:
                        connection.close()
                except sqlite3.Error as exc:
                    raise ConfigurationError(
                        f"cannot read the pre-2025 province table: {exc}"
                    ) from exc
                codes = {
                    str(code).strip().zfill(3)
                    for (code,) in rows
                    if code is not None and str(code).strip().isdigit()
                }
                if not codes:
                    raise ConfigurationError("the pre-2025 province table is empty")
                _CCCD_PROVINCE_CODES = frozenset(codes)
    return _CCCD_PROVINCE_CODES


def preload() -> None:
    """Load every table now (start-up), not on the first request."""
    _load_current()
    _load_legacy()


def province_exists(code: str) -> bool:
    """Whether ``code`` (two digits, e.g. "01") is a province in force today."""
    return code in _load_current()[0]


def ward_exists(code: str) -> bool:
    """Whether ``code`` (five digits, e.g. "00004") is a ward in force today."""
    return code in _load_current()[1]


def ward_in_province(ward_code: str, province_code: str) -> bool | None:
    """Whether the ward lies in the province; None when the ward code is unknown."""
    owner = _load_current()[1].get(ward_code)
    if owner is None:
        return None
    return owner == province_code


def ward_province(ward_code: str) -> str | None:
    """The province a ward belongs to, or None for an unknown ward."""
    return _load_current()[1].get(ward_code)


def province_name(code: str) -> str | None:
    return _load_current()[0].get(code)


def ward_name(code: str) -> str | None:
    return _load_current()[2].get(code)


def iter_provinces() -> Iterator[Division]:
    """The 34 current provinces, in the package's order."""
    for code, name in _load_current()[0].items():
        yield Division(code, name)


def iter_wards(province_code: str) -> Iterator[Division]:
    """The current wards of one province (nothing for an unknown province)."""
    _, ward_province_map, names = _load_current()
    for code, owner in ward_province_map.items():
        if owner == province_code:
            yield Division(code, names[code])


def cccd_province_codes() -> frozenset[str]:
    """The pre-2025 province codes that CCCD numbers start with, as 3 digits ("001")."""
    return _load_legacy()
