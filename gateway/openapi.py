"""The OpenAPI 3.0 document of the public API, built in code and served at
``GET /openapi.json``.

It is built from the same constants and limits that validation uses (enums, lengths,
screening questions), so the two cannot drift apart silently; ``tests/test_fuzz_api.py``
fuzzes the running gateway from this document and checks every answer against it.

String lengths are the limits after normalisation (NFC, whitespace collapsed): the
gateway is a little more liberal on the wire than the document, never stricter.
Operator endpoints (``/metrics`` and the operator API) are not part of this document.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from gateway import __version__
from gateway import constants as c
from gateway.validation import (
    EMAIL_MAX,
    NAME_MAX,
    NAME_MIN,
    OCCUPATION_MAX,
    REFERENCE_CODE_MAX,
    STREET_MAX,
)

# Phones, identity numbers, insurance numbers, dates and enum values: validation refuses
# anything longer before it looks at the content.
SHORT_FIELD_MAX = 40
REGISTRATION_ID_PATTERN = r"^[0-9]{1,4}-[0-9]{1,16}-[0-9]{1,10}-[0-9a-z]{10}$"
# Every status a registration can report, from queued in Redis to vaccinated.
REGISTRATION_STATUSES = ("queued", *c.STATUSES)

Schema = dict[str, Any]


def _string(description: str, *, min_length: int = 1, max_length: int = SHORT_FIELD_MAX, **extra: Any) -> Schema:
    return {"type": "string", "minLength": min_length, "maxLength": max_length,
            "description": description, **extra}


def _optional(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _registration_request() -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["full_name", "date_of_birth", "gender", "phone", "id_document",
                     "address", "priority_group", "occupation", "site_id", "consent"],
        "properties": {
            "full_name": _string(
                "Full name; letters (Vietnamese diacritics welcome), spaces, apostrophes, "
                "hyphens and dots. NFD input is accepted and stored as NFC.",
                min_length=NAME_MIN, max_length=NAME_MAX,
            ),
            "date_of_birth": _string("YYYY-MM-DD, a real date; age within the allowed range.",
                                     format="date", min_length=10, max_length=10),
            "gender": {"type": "string", "enum": list(c.GENDERS)},
            "phone": _string(
                "Vietnamese mobile number in any common spelling (0912 345 678, +84912345678, "
                "84912345678); must be a JSON string.", pattern=r"^[0-9+() ./\-]+$",
            ),
            "id_document": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "number"],
                "properties": {
                    "type": {"type": "string", "enum": list(c.ID_DOCUMENT_TYPES)},
                    "number": _string(
                        "CCCD: 12 digits (province, century/gender and birth year must "
                        "match the form); CMND: 9 digits; passport: letter + 5-8 letters or "
                        "digits. Spaces, dots and hyphens are ignored. Must be a JSON string."
                    ),
                },
            },
            "health_insurance_number": _optional(_string(
                "Health insurance card number (e.g. DN4790123456789) or the 10-digit "
                "social insurance number."
            )),
            "email": _optional(_string("E-mail address.", max_length=EMAIL_MAX, format="email")),
            "address": {
                "type": "object",
                "additionalProperties": False,
                "required": ["province_code", "ward_code", "street"],
                "properties": {
                    "province_code": _string("Province code (2 digits, divisions after the "
                                             "2025 reorganisation).", pattern="^[0-9]{1,2}$"),
                    "ward_code": _string("Ward code (5 digits) inside that province.",
                                         pattern="^[0-9]{1,5}$"),
                    "street": _string("House number and street.", max_length=STREET_MAX),
                },
            },
            "priority_group": _string("Priority group code (reference data).",
                                      max_length=REFERENCE_CODE_MAX),
            "occupation": _string("Occupation.", max_length=OCCUPATION_MAX),
            "site_id": _string("The vaccination site chosen (reference data).",
                               max_length=REFERENCE_CODE_MAX),
            "preferred_date": _optional(_string("YYYY-MM-DD, today or within "
                                                f"{c.PREFERRED_DATE_HORIZON_DAYS} days.",
                                                format="date", min_length=10, max_length=10)),
            "preferred_session": _optional({"type": "string", "enum": list(c.PREFERRED_SESSIONS)}),
            "screening": _optional({
                "type": "object",
                "additionalProperties": False,
                "properties": {q: _optional({"type": "boolean"}) for q in c.SCREENING_QUESTIONS},
            }),
            "consent": {"type": "boolean", "enum": [True]},
            "channel": _optional({"type": "string", "enum": list(c.CHANNELS),
                                  "description": "Used when the X-Channel header is absent."}),
        },
    }


def _error(extra: Schema | None = None) -> Schema:
    field_error = {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
    }
    return {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "Machine-readable code."},
            "message": {"type": "string", "description": "Readable text (Vietnamese with "
                        "Accept-Language: vi)."},
            "fields": {"type": "object", "additionalProperties": field_error,
                       "description": "Every invalid field at once, by path (address.ward_code)."},
            **(extra or {}),
        },
    }


def _json(schema_ref: str, description: str, *, retry_after: bool = False) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {
            "required": True, "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer", "minimum": 0},
        }}
    return response


def _header(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": schema,
            "description": description}


def _register_operation() -> Schema:
    return {
        "operationId": "register",
        "summary": "Register one person for vaccination.",
        "security": [],
        "parameters": [
            _header("Idempotency-Key", {"type": "string", "pattern": "^[\\x20-\\x7e]{1,128}$"},
                    "Same key, same answer: a retry returns the first registration."),
            _header("X-Channel", {"type": "string", "enum": list(c.CHANNELS)},
                    "Where the form was filled in."),
            _header("Accept-Language", {"type": "string"}, "vi for Vietnamese messages."),
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RegistrationRequest"}}},
        },
        "responses": {
            "202": _json("RegistrationAccepted", "Queued: the registration is safely in the intake queue."),
            "200": _json("RegistrationAccepted", "An exact replay (same person and content, or same Idempotency-Key)."),
            "400": _json("Error", "Invalid: every field error at once, in `fields`."),
            "408": _json("Error", "The body did not arrive in time."),
            "409": _json("Conflict", "This identity document is already registered with other details."),
            "413": _json("Error", "The body is larger than the limit."),
            "415": _json("Error", "The body is not application/json."),
            "429": _json("Error", "Rate limited (client address or phone).", retry_after=True),
            "503": _json("Error", "Overloaded or a dependency is down; retry after Retry-After (a retry never registers twice).", retry_after=True),
        },
    }


def _status_operation() -> Schema:
    return {
        "operationId": "registrationStatus",
        "summary": "Status of one registration; no personal data.",
        "security": [],
        "parameters": [{"name": "registration_id", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": REGISTRATION_ID_PATTERN}}],
        "responses": {
            "200": _json("RegistrationStatus", "Found."),
            "404": _json("Error", "No such registration."),
            "503": _json("Error", "A dependency is down.", retry_after=True),
        },
    }


def _components() -> Schema:
    return {
        "RegistrationRequest": _registration_request(),
        "RegistrationAccepted": {
            "type": "object",
            "required": ["registration_id", "status", "received_at"],
            "properties": {
                "registration_id": {"type": "string", "pattern": REGISTRATION_ID_PATTERN},
                "status": {"type": "string", "enum": ["queued"]},
                "received_at": {"type": "string", "format": "date-time"},
            },
        },
        "Conflict": _error({
            "registration_id": {"type": "string", "pattern": REGISTRATION_ID_PATTERN,
                                "description": "Only when the phone matches the first registration."},
            "received_at": {"type": "string", "format": "date-time"},
        }),
        "RegistrationStatus": {
            "type": "object",
            "required": ["registration_id", "status"],
            "properties": {
                "registration_id": {"type": "string"},
                "status": {"type": "string", "enum": list(REGISTRATION_STATUSES)},
                "doses_received": {"type": "integer", "minimum": 0},
            },
        },
        "Health": {"type": "object", "required": ["status"],
                   "properties": {"status": {"type": "string", "enum": ["alive"]}}},
        "Readiness": {
            "type": "object",
            "required": ["ready", "checks"],
            "properties": {
                "ready": {"type": "boolean"},
                "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
                "backlog": {"type": "integer", "minimum": 0, "nullable": True},
            },
        },
        "Error": _error(),
    }


def document() -> Schema:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Vaccination registration intake",
            "version": __version__,
            "description": "Public intake API of the national COVID-19 vaccination "
                           "registration portal. One person per request.",
        },
        "paths": {
            "/v1/registrations": {"post": _register_operation()},
            "/v1/registrations/{registration_id}": {"get": _status_operation()},
            "/healthz": {"get": {"operationId": "healthz", "summary": "The process is alive.",
                                 "security": [],
                                 "responses": {"200": _json("Health", "Alive.")}}},
            "/readyz": {"get": {
                "operationId": "readyz", "security": [],
                "summary": "Redis reachable, reference data loaded, backlog under the shed mark.",
                "responses": {"200": _json("Readiness", "Ready."),
                              "503": _json("Readiness", "Not ready.")},
            }},
        },
        "components": {"schemas": _components()},
    }


@cache
def document_bytes() -> bytes:
    return orjson.dumps(document())
