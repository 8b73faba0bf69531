"""Schemathesis over the API's own OpenAPI document, against a real ``jobqueue api``
process (real MongoDB and Redis): no generated request, valid or not, gets a 5xx, and
every answer conforms to the document (declared status codes, content types, bodies).

Bounded and deterministic: a fixed number of examples per operation, derandomized, so
a run takes about a minute on two busy cores and fails the same way twice.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from services.api.app import create_app
from shared.settings import Settings
from tests.conftest import Servers
from tests.support import isolated_settings, spawn

EXAMPLES = 25
# NOTE: positive_data_acceptance ("a schema-valid request is accepted") is off on
# purpose. The document cannot say which jobTypes exist, which payload each needs (its
# schema is the job type's, chosen at run time), or that a cursor must be one the API
# returned: such requests are schema-valid and rightly answered 422. Every other check
# stays on, including not_a_server_error and negative_data_rejection.


@pytest.fixture(scope="module")
def api_url(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("fuzz")
    service = spawn("api", isolated_settings(servers.redis_url, servers.mongodb_url,
                                             base / "logs"), base / "out")
    assert service.url
    try:
        yield service.url
    finally:
        service.stop()


# NOTE: the document comes from the app object (building it needs no stores), the
# answers from the real process; schemathesis.pytest.from_fixture does not work with
# pytest 9.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case, api_url: str) -> None:
    case.call_and_validate(base_url=api_url, timeout=30,
                           excluded_checks=[checks.positive_data_acceptance])
