"""Schemathesis hooks for the iotsync REST contract test (crates/iotsync-server/tests/openapi_contract.rs).

`error_body_shape`: every 4xx/5xx answer is JSON `{code, message, field?}` (SPEC §12), whatever
the document says, so an undocumented error cannot slip past with some other body.
"""

import re

import schemathesis

CODE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


@schemathesis.check
def error_body_shape(ctx, response, case):
    """Every error answer is {code, message, field?} with a stable dotted snake_case code."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except Exception as e:  # noqa: BLE001 - any decoding failure is the finding
        raise AssertionError(
            f"{response.status_code} answer is not JSON ({e}): {response.text[:200]!r}"
        )
    if not isinstance(body, dict):
        raise AssertionError(f"{response.status_code} answer is not an object: {body!r}")
    code = body.get("code")
    if not isinstance(code, str) or not CODE.match(code):
        raise AssertionError(f"error code {code!r} is not a stable code: {body!r}")
    message = body.get("message")
    if not isinstance(message, str) or not message:
        raise AssertionError(f"error without a message: {body!r}")
    if "field" in body and (not isinstance(body["field"], str) or not body["field"]):
        raise AssertionError(f"error field is not a field name: {body!r}")
    return None
