"""The REST API in a real `movierec serve` process on loopback, against the in-process Recommender."""

import shutil
import urllib.request
from pathlib import Path

import pytest
from conftest import call


def test_health_and_model(server):
    base, rec = server
    assert call(base, "GET", "/health") == (200, {"status": "ok"})
    status, info = call(base, "GET", "/model")
    assert status == 200 and info["run_id"] == rec.info["run_id"] and "version" in info


def test_user_recommendations_match_the_library(server):
    base, rec = server
    user = int(rec.user_ids[3])
    status, body = call(base, "GET", f"/users/{user}/recommendations?k=5")
    assert status == 200 and body["user_id"] == user
    expected = [r.to_dict() for r in rec.recommend(user, 5)]
    assert [m["movie_id"] for m in body["recommendations"]] == [e["movie_id"] for e in expected]
    assert body["recommendations"][0]["title"] == expected[0]["title"] and "genres" in body["recommendations"][0]
    rated = set(rec.rated(user))
    assert not rated & {m["movie_id"] for m in body["recommendations"]}
    _, everything = call(base, "GET", f"/users/{user}/recommendations?k=20&exclude_rated=false")
    assert len(everything["recommendations"]) == 20


def test_history_similar_search_and_predictions(server):
    base, rec = server
    m = [int(x) for x in rec.item_ids[:3]]
    status, body = call(base, "POST", "/recommendations",
                        {"history": [m[0], {"movie_id": m[1], "rating": 4.5}], "k": 4})
    expected = rec.recommend_for_history([m[0], (m[1], 4.5)], 4)
    assert status == 200 and [r["movie_id"] for r in body["recommendations"]] == [e.movie_id for e in expected]
    status, body = call(base, "GET", f"/movies/{m[2]}/similar?k=3")
    assert status == 200 and len(body["recommendations"]) == 3 and m[2] not in [r["movie_id"] for r in
                                                                                 body["recommendations"]]
    status, found = call(base, "GET", "/movies?query=movie%201&limit=5")
    assert status == 200 and 0 < len(found) <= 5 and all("movie 1" in f["title"].lower() for f in found)
    user = int(rec.user_ids[0])
    status, body = call(base, "POST", "/predictions", {"pairs": [{"user_id": user, "movie_id": i} for i in m]})
    assert status == 200
    assert [p["predicted_rating"] for p in body["predictions"]] == pytest.approx(
        [rec.predict_rating(user, i) for i in m], abs=1e-5)


@pytest.mark.parametrize("method, path, body, raw, status, words", [
    ("GET", "/users/999999/recommendations", None, None, 404, "unknown user id 999999"),
    ("GET", "/movies/999999/similar", None, None, 404, "unknown movie id 999999"),
    ("GET", "/users/1/recommendations?k=0", None, None, 422, "k"),
    ("GET", "/users/1/recommendations?k=101", None, None, 422, "k"),
    ("GET", "/users/abc/recommendations", None, None, 422, "user_id"),
    ("GET", "/movies?query=", None, None, 422, "query"),
    ("POST", "/recommendations", None, b"{not json", 422, "json"),
    ("POST", "/recommendations", {"history": []}, None, 422, "history"),
    ("POST", "/recommendations", {"history": list(range(1001))}, None, 422, "history"),
    ("POST", "/recommendations", {"history": [{"movie_id": 1, "rating": 9}]}, None, 422, "rating"),
    ("POST", "/recommendations", {"history": [999999]}, None, 404, "unknown movie id"),
    ("POST", "/predictions", {"pairs": [{"user_id": 999999, "movie_id": 1}]}, None, 404, "unknown user id"),
    ("POST", "/predictions", None, b"x" * 300_000, 413, "bytes"),
])
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(server, method, path, body, raw, status, words):
    base, rec = server
    assert 1 in rec.user_ids and 1 in rec.item_ids  # ids 1 are known: only the named problem is wrong
    got, payload = call(base, method, path, body, raw)
    assert got == status
    assert words.lower() in payload["error"].lower()
    assert call(base, "GET", "/health")[0] == 200


def test_page_is_served(server):
    base, _ = server
    with urllib.request.urlopen(base + "/", timeout=30) as resp:
        html = resp.read().decode()
    assert resp.headers["content-type"].startswith("text/html") and 'id="user-form"' in html


def test_openapi_describes_every_endpoint(server):
    base, _ = server
    status, spec = call(base, "GET", "/openapi.json")
    assert status == 200 and "Limits" in spec["info"]["description"]
    assert {"/health", "/model", "/users/{user_id}/recommendations", "/recommendations", "/movies/{movie_id}/similar",
            "/movies", "/predictions"} <= set(spec["paths"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_web_page_recommends_in_a_real_browser(server):
    """The page at / in headless Chromium: a user's recommendations, then ones from liked movies."""
    from playwright.sync_api import sync_playwright

    base, rec = server
    user = int(rec.user_ids[5])
    expected = [r.title + (f" ({r.year})" if r.year else "") for r in rec.recommend(user, 10)]
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('run test')")
            page.fill("#user-id", str(user))
            page.click("#user-go")
            page.wait_for_selector("tr.result")
            assert page.locator("tr.result td:nth-child(2)").all_inner_texts() == expected
            page.fill("#user-id", "999999")
            page.click("#user-go")
            page.wait_for_function("document.getElementById('error').textContent.includes('unknown user')")
            page.fill("#query", "movie 1")
            page.click("#search-go")
            page.click("button.match >> nth=0")
            page.click("button.match >> nth=1")
            page.click("#history-go")
            page.wait_for_selector("tr.result")
            assert len(page.locator("tr.result").all()) == 10
            shot = SCREENSHOTS / "web-page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        finally:
            browser.close()
