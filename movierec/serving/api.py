"""The REST API over a loaded model: ``movierec serve`` runs it with uvicorn.

FastAPI, not Flask: request and response models are declared once (pydantic) and give both the
input validation (400/422 with the offending field named) and the OpenAPI description at
``/openapi.json`` (browsable at ``/docs``), and it runs on an ASGI server built for throughput.
Handlers are ``async`` and run on the event loop: each request is a millisecond of CPU, so a
thread pool would add switching and lock contention without adding throughput.

Input limits are in ``LIMITS`` (and the OpenAPI description): bad input is a 4xx with a JSON
``{"error": ...}`` naming the problem, never echoing the input, and the server keeps serving.
Bodies are read by :class:`BodyGuard` before any handler sees them: at most ``MAX_BODY`` bytes
counted as they arrive (a chunked upload has no Content-Length to check), JSON only, and within
``body_timeout`` seconds, so neither a large nor a stalled upload ties up memory or connections.
Before that, :class:`movierec.serving.access.AccessGuard` answers only allowed Host names and checks the
API key a write (or, when so configured, a read) needs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from importlib import resources
from typing import Annotated, TypeVar

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, Discriminator, Field, Tag
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from movierec import __version__
from movierec.core.ids import MAX_ID
from movierec.core.settings import CANDIDATES
from movierec.serving.access import SCOPE_KEY, Access, AccessDenied, AccessGuard
from movierec.serving.monitoring import MetricsMiddleware, ServingMetrics
from movierec.serving.recommender import (
    MovieExistsError,
    Recommendation,
    Recommender,
    RecommenderError,
    UnknownMovieError,
    UnknownUserError,
)
from movierec.serving.store import POOL_WAIT, InteractionStore, Rating, StoreError

MAX_K = CANDIDATES  # answers are at most as long as the candidate lists the ranking stage was evaluated on
MAX_ITEMS = 1000
MAX_BODY = 256 * 1024
BODY_TIMEOUT = 10.0  # seconds a client may take to send its body
MAX_SKEW = 300  # seconds a rating's client-given timestamp may be from the server's clock
LIMITS = (f"Limits: k 1-{MAX_K}; ids 0-{MAX_ID} (integers; true/false are not ids); a history of at most {MAX_ITEMS} "
          f"movies; at most {MAX_ITEMS} (user, movie) pairs per prediction request; title queries of 1-100 "
          f"characters; request bodies JSON (415 otherwise), at most {MAX_BODY:,} bytes (413 beyond), sent within "
          f"{BODY_TIMEOUT:g} s (408 beyond); a rating's timestamp within {MAX_SKEW} s of the server's clock. "
          "Unknown ids: 404; invalid fields: 422; requests the model cannot answer: 400. Writes (POST /ratings, "
          "POST /movies) need an API key (Authorization: Bearer <key>; 401 without one, 403 for a user outside its "
          "scope or, adding a movie, a key that is not a backend's; 429 over its write rate); a Host the server "
          "does not answer to: 400; a movie id the catalogue has: 409.")
# /docs: Swagger UI from jsDelivr, one pinned release whose files the browser checks against these
# hashes (Subresource Integrity; sha384 of swagger-ui-dist 5.35.0's files as npm ships them, which
# jsDelivr serves unchanged): a changed file is refused, not run on this API's origin.
SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.35.0/"
SWAGGER_INTEGRITY = {"swagger-ui-bundle.js": "sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9",
                     "swagger-ui.css": "sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I"}
SWAGGER_INIT = ("SwaggerUIBundle({url: '/openapi.json', dom_id: '#swagger-ui', deepLinking: true, validatorUrl: null, "
                "presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset], "
                "layout: 'BaseLayout'});")
log = logging.getLogger("movierec.serving.api")
T = TypeVar("T")


def _digits(value: object) -> object:
    """Ids and counts in a URL are plain decimal digits: int() would also take "1_0", "+1" or " 1"."""
    if isinstance(value, str) and not re.fullmatch(r"[0-9]{1,19}", value):
        raise ValueError("must be written with the digits 0-9 only")
    return value


K = Annotated[int, Query(ge=1, le=MAX_K, description=f"how many movies (1-{MAX_K})"), BeforeValidator(_digits)]
ID = Annotated[int, Path(ge=0, le=MAX_ID, description="the MovieLens id"), BeforeValidator(_digits)]
# strict: JSON true is not movie 1, and 3.0 or "3" is not an id
BodyId = Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]


class Movie(BaseModel):
    movie_id: int
    title: str
    genres: list[str]
    year: int | None
    score: float = Field(description="ordering score, higher is better (for similar movies: cosine similarity)")
    predicted_rating: float | None = Field(None, description="the rating model's 0.5-5 stars, where it applies")


class Recommendations(BaseModel):
    user_id: int | None = None
    movie_id: int | None = None
    recommendations: list[Movie]


class Rated(BaseModel):
    movie_id: BodyId
    rating: float = Field(5.0, ge=0.5, le=5.0, strict=True, allow_inf_nan=False)


def _history_entry(value: object) -> str:
    return "rated" if isinstance(value, dict | Rated) else "id"


# A movie id or a {movie_id, rating} object, told apart by shape, so an error names one of them.
HistoryEntry = Annotated[Annotated[BodyId, Tag("id")] | Annotated[Rated, Tag("rated")], Discriminator(_history_entry)]


class HistoryRequest(BaseModel):
    history: list[HistoryEntry] = Field(min_length=1, max_length=MAX_ITEMS,
                                       description="movie ids, or {movie_id, rating} objects (0.5-5 stars)")
    k: int = Field(10, ge=1, le=MAX_K, strict=True)


class Pair(BaseModel):
    user_id: BodyId
    movie_id: BodyId


class PredictionRequest(BaseModel):
    pairs: list[Pair] = Field(min_length=1, max_length=MAX_ITEMS)


class Prediction(Pair):
    predicted_rating: float


class Predictions(BaseModel):
    predictions: list[Prediction]


class NewRating(BaseModel):
    user_id: BodyId
    movie_id: BodyId
    rating: float = Field(ge=0.5, le=5.0, strict=True, allow_inf_nan=False, description="0.5-5 stars")
    timestamp: int | None = Field(None, ge=0, le=2**40, strict=True,
                                  description=f"seconds since 1970, within {MAX_SKEW} s of the server's clock "
                                              "(default: the server's clock)")


class NewMovieBody(BaseModel):
    movie_id: BodyId
    title: str = Field(min_length=1, max_length=300, description='a trailing "(YYYY)" is its year unless year is set')
    genres: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field([], max_length=50)
    year: int = Field(0, ge=0, le=9999, strict=True, description="release year (0: unknown)")


class AddedMovieOut(BaseModel):
    movie_id: int
    title: str
    genres: list[str]
    year: int | None
    nearest: Movie = Field(description="the known movie whose features are nearest (score: their cosine similarity), "
                                       "which stands in for it with the users who have not rated that one")


class Stored(BaseModel):
    stored: bool = Field(description="false when the movie already had this rating from this user (e.g. a retried "
                                     "request): nothing changed")
    correction: bool = Field(description="true when it replaced a different earlier rating of the movie")
    previous_rating: float | None = Field(description="the rating it replaced, or the same one when not stored")
    timestamp: int = Field(description="the stored rating's time (a correction's is past the one it replaced)")


class Error(BaseModel):
    error: str


def _movies(recs: list[Recommendation]) -> list[Movie]:
    return [Movie(**r.to_dict()) for r in recs]


def _error(status: int, message: str, close: bool = False) -> JSONResponse:
    """The JSON error response; ``close`` ends the connection after it (the body was not read
    to its end, so the connection cannot carry another request)."""
    return JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"} if close else None)


def _json_media(content_type: str) -> bool:
    """``application/json`` or ``application/<something>+json``, parameters aside."""
    main, _, sub = content_type.split(";")[0].strip().lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


class BodyGuard:
    """ASGI middleware that reads each request's body before the app does (see the module
    docstring) and replays it to the app; answers 413, 415 or 408 itself. A repeated header
    counts by its first value, as Starlette reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY, timeout: float = BODY_TIMEOUT):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        declared = headers.get("content-length")
        has_body = declared not in (None, "0") or "transfer-encoding" in headers
        refusal = None
        if has_body and not _json_media(headers.get("content-type", "")):
            # before reading: a client waiting for "100 Continue" is answered without sending its body
            refusal = _error(415, "the request body must be JSON (Content-Type: application/json)", close=True)
        elif declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            refusal = _error(413, f"request body over {self.max_bytes} bytes", close=True)
        if refusal is not None:
            return await refusal(scope, receive, send)
        body, status = await self._read(receive)
        if status == 413:
            return await _error(413, f"request body over {self.max_bytes} bytes", close=True)(scope, receive, send)
        if status == 408:
            return await _error(408, f"request body not received within {self.timeout:g} s", close=True)(
                scope, receive, send)
        if body is None:  # the client went away
            return None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # e.g. the client disconnecting while the app works
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> tuple[bytes | None, int | None]:
        """(the whole body, None), or (None, 413 or 408), or (None, None) when the client left.
        Responses are sent by the caller, outside the time limit."""
        body = bytearray()
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None, None
                    body += message.get("body", b"")
                    if len(body) > self.max_bytes:
                        return None, 413
                    if not message.get("more_body", False):
                        return bytes(body), None
        except TimeoutError:
            return None, 408


class SecurityHeaders:
    """ASGI middleware giving every response what keeps a browser from framing the API's pages (the
    page has a Rate button to click-jack), from reading an answer as another type than it says, and
    from running anything but the page's own code: nosniff, X-Frame-Options, no referrer, and a
    Content-Security-Policy of ``default-src 'none'`` unless the response set its own (the HTML
    pages do: :func:`inline_policy`)."""

    DEFAULTS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                (b"referrer-policy", b"no-referrer"),
                (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"))

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message = {**message, "headers": headers + [h for h in self.DEFAULTS if h[0] not in present]}
            await send(message)

        return await self.app(scope, receive, send_secured)


class StoreBreaker:
    """The ratings store as the handlers call it, with a circuit breaker. In a PostgreSQL outage
    each store call waits ``POOL_WAIT`` seconds for a connection before it fails: with 40 clients
    every request took 3 s and held a worker thread. So after a call fails, the store is left
    alone for ``pause`` seconds (calls fail at once: a known user gets the model's own
    recommendations, others a 503), then the next call probes it, alone (calls meanwhile fail at
    once too). The outage is logged when it starts and when the store answers again, not per
    request."""

    def __init__(self, store: InteractionStore, pause: float = POOL_WAIT):
        self.store, self.pause = store, pause
        self.down = False
        self._retry_at = -float("inf")  # time.monotonic() from which a call may try the store again
        self._probing = False

    async def call(self, work: Callable[..., T], *args: object, thread: bool = True) -> T:
        """``work(*args)``, in a worker thread (``thread``) or on the event loop; StoreError at
        once while the store is left alone."""
        if self.down and (self._probing or time.monotonic() < self._retry_at):
            raise StoreError(f"{self.store.label}: unavailable (tried again every {self.pause:g} s)")
        probe = self.down
        self._probing = self._probing or probe
        try:
            result = await run_in_threadpool(work, *args) if thread else work(*args)
        except StoreError as exc:
            self._retry_at = time.monotonic() + self.pause
            if not self.down:
                log.warning("movierec: the ratings store failed (%s); recommending to known users without their "
                            "stored ratings and answering 503 to the rest, trying it again every %g s", exc,
                            self.pause)
            self.down = True
            raise
        finally:
            if probe:
                self._probing = False
        if self.down:
            log.warning("movierec: the ratings store can be read again")
            self.down = False
        return result


def _sources(html: str, tag: str, *more: str) -> str:
    """CSP sources for exactly the inline ``<tag>`` blocks of ``html`` (their sha256), and ``more``."""
    return " ".join([*(f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                       for body in re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)), *more])


def inline_policy(html: str, scripts: tuple[str, ...] = (), styles: tuple[str, ...] = (),
                  images: tuple[str, ...] = ()) -> str:
    """The Content-Security-Policy of an HTML page of this API: its own inline scripts and styles
    (by hash) and the given further sources, requests to this origin only, and no framing."""
    image_sources = " ".join(("'self'", *images))
    return (f"default-src 'none'; script-src {_sources(html, 'script', *scripts)}; "
            f"style-src {_sources(html, 'style', *styles)}; img-src {image_sources}; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


DOCS_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>movierec API</title>
<link rel="stylesheet" href="{SWAGGER_UI}swagger-ui.css" integrity="{SWAGGER_INTEGRITY['swagger-ui.css']}"
      crossorigin="anonymous">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{SWAGGER_UI}swagger-ui-bundle.js" integrity="{SWAGGER_INTEGRITY['swagger-ui-bundle.js']}"
        crossorigin="anonymous"></script>
<script>{SWAGGER_INIT}</script>
</body>
</html>
"""
# Swagger UI sets style attributes as it renders (hence 'unsafe-inline' for styles, which run no
# code) and draws icons as data: images.
DOCS_POLICY = inline_policy(DOCS_HTML, scripts=(f"{SWAGGER_UI}swagger-ui-bundle.js",),
                            styles=(f"{SWAGGER_UI}swagger-ui.css", "'unsafe-inline'"), images=("data:",))


def _validation_errors(exc: RequestValidationError) -> list[dict]:
    """Where and what, never the input: the input may be bytes, NaN or megabytes, none of which a
    JSON error response can or should carry."""
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "invalid")), "type": str(e.get("type"))}
            for e in exc.errors()]


def create_app(rec: Recommender, body_timeout: float = BODY_TIMEOUT, store: InteractionStore | None = None,
               access: Access | None = None) -> FastAPI:
    """The API over one loaded model; ``store`` keeps the ratings users send (``POST /ratings``)
    and serves from them: a known user's rated movies leave their recommendations, a user the
    model has never seen is recommended from what they rated. ``access``: who may write, and
    read (default: no keys, so no writes; loopback Host names)."""
    access = access if access is not None else Access(keys_file=None)
    app = FastAPI(title="movierec", version=__version__, docs_url=None, redoc_url=None,  # /docs: below
                  description="Two-stage movie recommendations (candidate sources, then a learned ranker that also "
                              "weighs the rating model's stars, where the data has ratings). " + LIMITS)
    errors = {404: {"model": Error, "description": "unknown user or movie id"},
              400: {"model": Error, "description": "a request the model cannot answer"}}
    keyed = {401: {"model": Error, "description": "no valid API key"},
             403: {"model": Error, "description": "the key may not write for this user"},
             429: {"model": Error, "description": "the key is over its write rate (Retry-After: seconds)"}}

    app.add_middleware(BodyGuard, timeout=body_timeout)
    # a request for another host, or without the key it needs, is refused unread
    app.add_middleware(AccessGuard, access=access, writes=frozenset({("POST", "/ratings"), ("POST", "/movies")}),
                       open_paths=frozenset({"/", "/health", "/metrics", "/docs", "/openapi.json"}),
                       any_host=frozenset({"/health", "/metrics"}))  # probes and scrapers name the pod's IP
    app.add_middleware(SecurityHeaders)  # the guards' refusals carry the headers too
    described = rec.describe()
    metrics = ServingMetrics({"version": described["version"], "run_id": str(described["run_id"] or ""),
                              "backend": described["backend"]}, store=store is not None)
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: every answer counts, refusals too
    page_html = (resources.files("movierec.serving") / "web" / "index.html").read_text()
    page_policy = inline_policy(page_html)

    @app.exception_handler(UnknownUserError)
    @app.exception_handler(UnknownMovieError)
    async def unknown(_: Request, exc: RecommenderError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(MovieExistsError)
    async def conflict(_: Request, exc: RecommenderError) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(RecommenderError)
    async def bad_request(_: Request, exc: RecommenderError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(AccessDenied)
    async def denied(_: Request, exc: AccessDenied) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers())

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StoreError)
    async def store_down(_: Request, exc: StoreError) -> JSONResponse:
        # logged by the StoreBreaker, once per outage
        return _error(503, "the ratings store is unavailable; try again later")

    @app.exception_handler(Exception)
    async def failed(_: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's doing: still JSON, and nothing of the input or the exception.
        return _error(500, "internal error")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # For a field that may take several shapes (a movie id or {movie_id, rating}) pydantic
        # reports every shape's failure; the deepest one is the one the client meant.
        detail = _validation_errors(exc)
        first = max(detail, key=lambda e: len(e["loc"]), default={"loc": [], "msg": "invalid request"})
        return JSONResponse({"error": f"{'.'.join(first['loc'])}: {first['msg']}", "detail": detail},
                            status_code=422)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        """A page where a person picks a user, or finds movies they liked, and sees recommendations."""
        return HTMLResponse(page_html, headers={"Content-Security-Policy": page_policy})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Swagger UI over /openapi.json, its files pinned by hash (SWAGGER_INTEGRITY)."""
        return HTMLResponse(DOCS_HTML, headers={"Content-Security-Policy": DOCS_POLICY})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    async def model() -> dict:
        """Which run, data and metrics the served model comes from, and what runs its rating model."""
        return rec.describe()

    breaker = StoreBreaker(store) if store is not None else None

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        """Prometheus metrics (movierec.serving.monitoring): requests, latency, errors, writes, the model."""
        if breaker is not None and metrics.store_up is not None:
            metrics.store_up.set(0 if breaker.down else 1)
        body, content_type = metrics.exposition(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    async def stored_ratings(user_id: int) -> list[Rating]:
        """The user's ratings in the store. SQLite in WAL mode never makes a reader wait for a
        writer, so that read stays on the event loop (a worker thread cost 22% of GET
        recommendations' throughput: 354 against 453 requests/s here); a PostgreSQL read is a
        network round trip, made in a worker thread. When the store cannot be read (or is left
        alone after failing: StoreBreaker), a user the model knows is still recommended to, from
        the model alone (what they rated since may come up again); a user it knows only from the
        store gets the StoreError (503)."""
        if breaker is None:
            return []
        try:
            return await breaker.call(breaker.store.ratings_of, user_id, thread=breaker.store.postgres)
        except StoreError:
            if not rec.knows_user(user_id):
                raise
            return []

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations, responses=errors)
    async def recommend(user_id: ID, k: K = 10, exclude_rated: bool = True) -> Recommendations:
        """Top-k movies for a user the model was trained on (unseen movies only, by default; also
        leaving out what they rated since through POST /ratings), or for a new user who rated
        movies through POST /ratings (from those ratings, as POST /recommendations)."""
        since = await stored_ratings(user_id)
        if rec.knows_user(user_id) or not since:
            exclude = [r.movie_id for r in since] if exclude_rated else []
            return Recommendations(user_id=user_id,
                                   recommendations=_movies(rec.recommend(user_id, k, exclude_rated, exclude)))
        history = [(r.movie_id, r.rating) for r in since]
        return Recommendations(user_id=user_id, recommendations=_movies(rec.recommend_for_history(history, k)))

    @app.post("/ratings", response_model=Stored, status_code=201, responses={**errors, **keyed},
              openapi_extra={"security": [{"apiKey": []}]})
    async def add_rating(body: NewRating, request: Request) -> Stored:
        """Store a user's rating of a movie (a new user's too): their next recommendations take it
        into account, and the next training run can learn from it (see README, Feedback). Needs an
        API key that may write for the user. A different rating of a movie the user rated before
        is a correction: stored, and the latest; the same rating again stores nothing."""
        key = request.scope.get(SCOPE_KEY)
        access.authorize_write(key, body.user_id)
        if breaker is None:
            raise RecommenderError("this server keeps no ratings (start it with movierec serve --store FILE)")
        if not rec.has_movie(body.movie_id):
            raise UnknownMovieError(body.movie_id)  # a 404, as everywhere
        if body.timestamp is not None and abs(body.timestamp - time.time()) > MAX_SKEW:
            # a time far ahead would outrank every later rating of the movie; the server's clock is the default
            raise RequestValidationError([{
                "loc": ("body", "timestamp"), "type": "value_error",
                "msg": f"{body.timestamp} is more than {MAX_SKEW} s from the server's clock ({int(time.time())}); "
                       "leave it out and the server stamps the time"}])
        # A worker thread: a write may wait on another writer's lock (SQLite's busy timeout, a
        # PostgreSQL round trip), which on the event loop would stall every other request.
        change = await breaker.call(partial(breaker.store.rate, body.user_id, body.movie_id, body.rating,
                                            timestamp=body.timestamp, written_by=key.id))
        if change.stored:
            metrics.ratings.inc()
        return Stored(stored=change.stored, correction=change.correction, previous_rating=change.previous,
                      timestamp=change.timestamp)

    @app.post("/recommendations", response_model=Recommendations, responses=errors)
    async def recommend_for_history(body: HistoryRequest) -> Recommendations:
        """Top-k movies for someone the model has never seen, from movies they rated."""
        history = [h if isinstance(h, int) else (h.movie_id, h.rating) for h in body.history]
        return Recommendations(recommendations=_movies(rec.recommend_for_history(history, body.k)))

    @app.get("/movies/{movie_id}/similar", response_model=Recommendations, responses=errors)
    async def similar(movie_id: ID, k: K = 10) -> Recommendations:
        """The k movies nearest to this one in the retrieval model's embedding space."""
        return Recommendations(movie_id=movie_id, recommendations=_movies(rec.similar_movies(movie_id, k)))

    @app.get("/movies", response_model=list[Movie])
    async def search(query: Annotated[str, Query(min_length=1, max_length=100)],
                     limit: Annotated[int, Query(ge=1, le=MAX_K), BeforeValidator(_digits)] = 20) -> list[Movie]:
        """Movies whose title contains the query (case-insensitive)."""
        return _movies(rec.search(query, limit))

    @app.post("/movies", response_model=AddedMovieOut, status_code=201, openapi_extra={"security": [{"apiKey": []}]},
              responses={**errors, **keyed, 409: {"model": Error, "description": "the catalogue has this movie id"}})
    async def add_movie(body: NewMovieBody, request: Request) -> AddedMovieOut:
        """Add a movie that came out after training, from its title, genres and year alone: from now
        on it is recommended to the users whose taste matches it, found as similar and searched,
        without retraining (a two-tower model only). Needs a backend API key. The movie lives in
        this server's loaded model: restart with `movierec --new-movies FILE serve` to keep it; a
        training run learns it from its ratings (POST /ratings) once the data lists it."""
        access.authorize_catalogue(request.scope.get(SCOPE_KEY))
        added = rec.add_movie(body.movie_id, body.title, body.genres, body.year)
        metrics.movies.inc()
        return AddedMovieOut(**{**added.to_dict(), "nearest": _movies([added.nearest])[0]})

    @app.post("/predictions", response_model=Predictions, responses=errors)
    async def predictions(body: PredictionRequest) -> Predictions:
        """Predicted star ratings (0.5-5) of (user, movie) pairs."""
        users, movies = [p.user_id for p in body.pairs], [p.movie_id for p in body.pairs]
        ratings = rec.predict_ratings(users, movies)
        return Predictions(predictions=[Prediction(user_id=u, movie_id=m, predicted_rating=r)
                                        for u, m, r in zip(users, movies, ratings)])

    described = app.openapi

    def openapi() -> dict:
        """The description, with the API key named as the scheme writes need (so /docs has an
        Authorize button that sends it)."""
        schema = described()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
            "type": "http", "scheme": "bearer",
            "description": "an API key from `movierec keys add`, sent as Authorization: Bearer <key>"}
        return schema

    app.openapi = openapi
    return app


def serve(rec: Recommender, host: str = "127.0.0.1", port: int = 8000, *, body_timeout: float = BODY_TIMEOUT,
          store: InteractionStore | None = None, access: Access | None = None) -> None:
    """Serve until interrupted. The loaded model and app are moved out of the garbage collector's
    sight first (``gc.freeze``): otherwise every full collection walks them again, which showed up
    as 30-40 ms stalls in the slowest 1% of requests under load."""
    import gc

    import uvicorn

    app = create_app(rec, body_timeout, store, access)
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
