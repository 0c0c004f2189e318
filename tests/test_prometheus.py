"""GET /metrics: what the API counts, as a Prometheus scrape reads it (movierec.serving.monitoring)."""

import pytest
from conftest import InProcessAPI, call
from prometheus_client.parser import text_string_to_metric_families

from movierec.serving.access import Access, KeyFile, parse_users
from movierec.serving.api import create_app
from movierec.serving.recommender import Recommender
from movierec.serving.store import InteractionStore

ROUTE = "/users/{user_id}/recommendations"


def scrape(api: InProcessAPI, host: str = InProcessAPI.HOST) -> dict[tuple[str, tuple], float]:
    """Every sample of one scrape, by (name, sorted labels), parsed by prometheus_client's own parser."""
    status, headers, body = api.request("GET", "/metrics", headers={"Host": host})
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def count(samples: dict, route: str, method: str, status: str) -> float:
    return samples.get(("movierec_requests_total", (("method", method), ("route", route), ("status", status))), 0.0)


@pytest.fixture
def keyed(tiny_bundle, tmp_path):
    """The API with a ratings store and keys: (api, the loaded model, a key for users 1-10, a backend key)."""
    keys = KeyFile(tmp_path / "keys.json")
    _, user_key = keys.add(users=parse_users("1-10"))
    _, backend = keys.add(backend=True)
    rec = Recommender.from_bytes(tiny_bundle)
    app = create_app(rec, store=InteractionStore(tmp_path / "ratings.sqlite3"), access=Access(keys.path))
    return InProcessAPI(app), rec, user_key, backend


def test_requests_are_counted_by_route_template_method_and_status_and_timed(keyed):
    api, rec, *_ = keyed
    user = int(rec.bundle.user_ids[0])
    for _ in range(2):
        assert call(api, "GET", f"/users/{user}/recommendations?k=3")[0] == 200
    assert call(api, "GET", "/users/999999999/recommendations")[0] == 404
    assert call(api, "GET", "/users/abc/recommendations")[0] == 422
    assert call(api, "GET", "/no/such/path")[0] == 404
    samples = scrape(api)
    assert count(samples, ROUTE, "GET", "200") == 2
    assert count(samples, ROUTE, "GET", "404") == 1 and count(samples, ROUTE, "GET", "422") == 1
    assert count(samples, "unmatched", "GET", "404") == 1
    # no series per user id: the filled-in paths appear nowhere
    routes = {value for _, labels in samples for key, value in labels if key == "route"}
    assert routes == {ROUTE, "unmatched"}
    timed = samples[("movierec_request_seconds_count", (("method", "GET"), ("route", ROUTE)))]
    assert timed == 4
    assert 0 < samples[("movierec_request_seconds_sum", (("method", "GET"), ("route", ROUTE)))] < 30
    assert samples[("movierec_request_seconds_bucket", (("le", "+Inf"), ("method", "GET"), ("route", ROUTE)))] == 4
    # the scrape itself is counted by the next one
    assert count(scrape(api), "/metrics", "GET", "200") == 1


def test_the_model_and_the_writes_are_exposed(keyed):
    api, rec, user_key, backend = keyed
    described = rec.describe()
    samples = scrape(api)
    info = (("backend", described["backend"]), ("run_id", str(described["run_id"])),
            ("version", described["version"]))
    assert samples[("movierec_model_info", info)] == 1
    assert samples[("movierec_store_up", ())] == 1  # a store, answering
    movie = int(rec.bundle.item_ids[0])
    rating = {"user_id": 1, "movie_id": movie, "rating": 4.0}
    assert call(api, "POST", "/ratings", rating)[0] == 401  # refused by the guard, outside the router
    assert call(api, "POST", "/ratings", rating, key=user_key)[0] == 201
    assert call(api, "POST", "/ratings", rating, key=user_key)[0] == 201  # the same again: nothing stored
    assert call(api, "POST", "/ratings", {**rating, "rating": 2.0}, key=user_key)[0] == 201  # a correction
    b = rec.bundle
    new = {"movie_id": 10**6, "title": "A New Film (2026)", "genres": list(b.genres[0])}
    assert call(api, "POST", "/movies", new, key=backend)[0] == 201
    samples = scrape(api)
    assert samples[("movierec_ratings_written_total", ())] == 2
    assert samples[("movierec_movies_added_total", ())] == 1
    assert count(samples, "unmatched", "POST", "401") == 1 and count(samples, "/ratings", "POST", "201") == 3


def test_a_scraper_naming_the_pods_address_is_answered_where_reads_are_refused(tiny_bundle):
    """Prometheus scrapes a pod by its IP, as a Kubernetes probe does /health: the Host allowlist,
    which refuses such a name everywhere else, lets /metrics through."""
    api = InProcessAPI(create_app(Recommender.from_bytes(tiny_bundle)))
    status, _, _ = api.request("GET", "/model", headers={"Host": "10.1.2.3:8000"})
    assert status == 400
    assert count(scrape(api, host="10.1.2.3:8000"), "unmatched", "GET", "400") == 1


def test_an_openmetrics_scraper_gets_openmetrics(tiny_bundle):
    api = InProcessAPI(create_app(Recommender.from_bytes(tiny_bundle)))
    status, headers, body = api.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF") and "movierec_model_info" in body.decode()


def test_a_server_without_a_store_reports_none_and_odd_methods_share_one_series(tiny_bundle):
    api = InProcessAPI(create_app(Recommender.from_bytes(tiny_bundle)))
    for method in ("BREW", "PROPFIND"):
        api.request(method, "/health")
    samples = scrape(api)
    assert not any(name == "movierec_store_up" for name, _ in samples)
    methods = {value for _, labels in samples for key, value in labels if key == "method"}
    assert methods == {"other"}  # the scrape itself counts from the next one on
    assert sum(v for (name, labels), v in samples.items() if name == "movierec_requests_total"
               and ("method", "other") in labels) == 2


def test_each_app_counts_its_own_requests(tiny_bundle):
    first, second = (InProcessAPI(create_app(Recommender.from_bytes(tiny_bundle))) for _ in range(2))
    call(first, "GET", "/health")
    assert count(scrape(first), "/health", "GET", "200") == 1
    assert count(scrape(second), "/health", "GET", "200") == 0
