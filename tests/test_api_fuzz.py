"""Schema-based fuzzing: schemathesis generates requests for every endpoint from the served
OpenAPI description (valid and invalid ones, with hypothesis) and checks that none gets a 5xx and
that every response matches the schema it declares."""

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance


def test_no_endpoint_answers_5xx(server):
    base, _ = server
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 7
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

        fuzz()
