"""schemathesis hooks for scripts/contract-test.sh (loaded through SCHEMATHESIS_HOOKS).

A generated Idempotency-Key that is valid is replaced by a fresh UUID (when
the case is generated: a check that re-sends the case re-sends its key). The
fuzzer draws keys from a small space ("0", "A", ...) and reuses them across
different bodies; the service then answers 422 by design (a key names one
request), which the positive-data check would count as a refused valid
request. Invalid keys are left as generated, so their refusal is still
checked. Replays themselves are tested in tests/api/idempotency.rs.
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"[!-~]{1,255}")


@schemathesis.hook
def map_headers(ctx, headers):
    if not headers:
        return headers
    for name in list(headers):
        if name.lower() == "idempotency-key" and VALID_KEY.fullmatch(str(headers[name])):
            headers[name] = str(uuid.uuid4())
    return headers


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    # The coverage phase builds its cases without map_headers. A case that
    # tests a missing header is left alone: editing it makes schemathesis
    # re-derive the case, and the missing header comes back.
    data = getattr(getattr(getattr(case, "meta", None), "phase", None), "data", None)
    if "MISSING" in str(getattr(data, "scenario", "")).upper():
        return
    if case.headers:
        map_headers(ctx, case.headers)
