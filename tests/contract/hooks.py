"""Schemathesis hooks for tests/contract.rs (loaded through SCHEMATHESIS_HOOKS).

`POST /v1/merchants:import` takes NDJSON, which schemathesis does not serialise itself: the document
describes the body as an array of NewMerchant, and this sends it as one JSON value per line. Anything
that is not an array (negative cases) goes as a single line, so the service sees what was generated.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if value is None:
        return None
    lines = value if isinstance(value, list) else [value]
    return "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8")
