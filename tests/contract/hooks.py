"""Schemathesis hooks for tests/contract.rs (loaded through SCHEMATHESIS_HOOKS).

`POST /v1/merchants:import` takes NDJSON, which schemathesis does not serialise itself: the document
describes the body as an array of NewMerchant, and this sends it as one JSON value per line. Anything
that is not an array (negative cases) goes as a single line, so the service sees what was generated.

A valid `Idempotency-Key` is made unique per call. Schemathesis draws few distinct keys ("0", "00")
and sends them with different bodies; the service rightly refuses a key reused with another body
(422, as the draft asks), but whether a valid key is fresh depends on what was sent before, not on the
request, so schemathesis would count it as a schema-valid request rejected. Reuse is tested in
tests/api.rs and tests/jobs.rs. Invalid keys are sent as drawn, so their refusal is still checked.
"""

import itertools
import json
import re

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if value is None:
        return None
    lines = value if isinstance(value, list) else [value]
    return "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8")


# The pattern the OpenAPI document gives the header.
VALID_KEY = re.compile(r'^([!#-~]{1,255}|"[!#-~]{1,255}")$')
SEQUENCE = itertools.count()


def unique_key(key):
    """`key` with a suffix of its own, still matching VALID_KEY (inside the quotes when quoted)."""
    suffix = f"~{next(SEQUENCE)}"
    quoted = key.startswith('"')
    bare = key[1:-1] if quoted else key
    bare = bare[: 255 - len(suffix)] + suffix
    return f'"{bare}"' if quoted else bare


@schemathesis.hook
def before_call(ctx, case, kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str):
            if VALID_KEY.match(headers[name]):
                headers[name] = unique_key(headers[name])
