"""Fuzzing the served API: schemathesis generates requests for every endpoint from the OpenAPI
description (valid and invalid ones, with hypothesis) and checks that none gets a 5xx and that
every response matches the schema it declares; then raw bodies of any content type, and JSON the
schema never produces (NaN, infinities, huge numbers, booleans as ids)."""

import http.client
import json
import urllib.parse

# schemathesis and hypothesis are imported by the tests that use them: imported here, every collection of the
# suite (the quick tier's too, which leaves this module out only after collecting it) paid ~3 s for them.


def test_no_endpoint_answers_5xx(server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    base, _ = server
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9  # the writes (POST /ratings, POST /movies) included
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

        fuzz()


def test_raw_bodies_of_any_type_never_get_a_5xx_or_an_echo(server):
    """Beyond the schema: any bytes with any content type, and JSON with NaN, huge numbers or
    booleans as ids, get a JSON 4xx naming the problem (or an answer), never a 5xx or the input."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    # JSON-ish values that broke the server before: NaN and infinities, integers past 64 bits, booleans
    # where ids go, deep nesting; with the endpoints' own keys, so the values reach validation.
    scalars = st.one_of(st.booleans(), st.none(), st.integers(-(2**80), 2**80),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
    keys = st.sampled_from(["history", "k", "pairs", "movie_id", "user_id", "rating", "x"])
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(keys, inner, max_size=4)),
                           max_leaves=12)
    bodies = st.one_of(st.binary(max_size=300), values.map(lambda v: json.dumps(v).encode()),
                        st.dictionaries(keys, values, max_size=3).map(lambda v: json.dumps(v).encode()))
    content_types = st.sampled_from([None, "application/json", "application/json; charset=utf-8", "text/plain",
                                      "application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
                                      "application/problem+json", "image/png"])
    base, _ = server
    url = urllib.parse.urlsplit(base)

    @given(path=st.sampled_from(["/recommendations", "/predictions"]), body=bodies, content_type=content_types)
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(path, body, content_type):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            headers = {"Content-Length": str(len(body))} | ({} if content_type is None else
                                                            {"Content-Type": content_type})
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        payload = json.loads(raw)
        assert response.status < 500, (response.status, payload)
        if response.status >= 400:
            assert isinstance(payload["error"], str)
            if len(body) > 40:  # neither as sent nor as JSON would escape it
                assert body not in raw and json.dumps(body.decode("latin-1"))[1:-1].encode() not in raw

    fuzz()
