"""The REST API over a loaded model: ``movierec serve`` runs it with uvicorn.

FastAPI, not Flask: request and response models are declared once (pydantic) and give both the
input validation (400/422 with the offending field named) and the OpenAPI description at
``/openapi.json`` (browsable at ``/docs``), and it runs on an ASGI server built for throughput.
Handlers are ``async`` and run on the event loop: each request is a millisecond of CPU, so a
thread pool would add switching and lock contention without adding throughput.

Input limits are in ``LIMITS`` (and the OpenAPI description): bad input is a 4xx with a JSON
``{"error": ...}`` naming the problem, and the server keeps serving.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from movierec import __version__
from movierec.serving import Recommendation, Recommender, RecommenderError, UnknownMovieError, UnknownUserError

MAX_K = 100  # the retrieval stage keeps 100 candidates per request
MAX_ITEMS = 1000
MAX_BODY = 256 * 1024
LIMITS = (f"Limits: k 1-{MAX_K}; a history of at most {MAX_ITEMS} movies; at most {MAX_ITEMS} (user, movie) pairs "
          f"per prediction request; title queries of 1-100 characters; request bodies of at most {MAX_BODY:,} bytes "
          "(413 beyond). Unknown ids: 404; invalid fields: 422; requests the model cannot answer: 400.")

K = Annotated[int, Query(ge=1, le=MAX_K, description=f"how many movies (1-{MAX_K})")]
ID = Annotated[int, Path(ge=0, le=2**62, description="the MovieLens id")]


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
    movie_id: int = Field(ge=0, le=2**62)
    rating: float = Field(5.0, ge=0.5, le=5.0)


class HistoryRequest(BaseModel):
    history: list[int | Rated] = Field(min_length=1, max_length=MAX_ITEMS,
                                       description="movie ids, or {movie_id, rating} objects (0.5-5 stars)")
    k: int = Field(10, ge=1, le=MAX_K)


class Pair(BaseModel):
    user_id: int = Field(ge=0, le=2**62)
    movie_id: int = Field(ge=0, le=2**62)


class PredictionRequest(BaseModel):
    pairs: list[Pair] = Field(min_length=1, max_length=MAX_ITEMS)


class Prediction(Pair):
    predicted_rating: float


class Predictions(BaseModel):
    predictions: list[Prediction]


class Error(BaseModel):
    error: str


def _movies(recs: list[Recommendation]) -> list[Movie]:
    return [Movie(**r.to_dict()) for r in recs]


def create_app(rec: Recommender) -> FastAPI:
    """The API over one loaded model."""
    app = FastAPI(title="movierec", version=__version__,
                  description="Two-stage movie recommendations (two-tower retrieval + rating model). " + LIMITS)
    errors = {404: {"model": Error, "description": "unknown user or movie id"},
              400: {"model": Error, "description": "a request the model cannot answer"}}

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            return JSONResponse({"error": f"request body over {MAX_BODY} bytes"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(UnknownUserError)
    @app.exception_handler(UnknownMovieError)
    async def unknown(_: Request, exc: RecommenderError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(RecommenderError)
    async def bad_request(_: Request, exc: RecommenderError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # For a field that may take several shapes (a movie id or {movie_id, rating}) pydantic
        # reports every shape's failure; the deepest one is the one the client meant.
        first = max(exc.errors(), key=lambda e: len(e.get("loc", ())), default={})
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}", "detail": exc.errors()},
                            status_code=422)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        """A page where a person picks a user, or finds movies they liked, and sees recommendations."""
        return HTMLResponse((resources.files("movierec") / "web" / "index.html").read_text())

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    async def model() -> dict:
        """Which run, data and metrics the served model comes from, and what runs its rating model."""
        return rec.describe()

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations, responses=errors)
    async def recommend(user_id: ID, k: K = 10, exclude_rated: bool = True) -> Recommendations:
        """Top-k movies for a user the model was trained on (unseen movies only, by default)."""
        return Recommendations(user_id=user_id, recommendations=_movies(rec.recommend(user_id, k, exclude_rated)))

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
                     limit: Annotated[int, Query(ge=1, le=MAX_K)] = 20) -> list[Movie]:
        """Movies whose title contains the query (case-insensitive)."""
        return _movies(rec.search(query, limit))

    @app.post("/predictions", response_model=Predictions, responses=errors)
    async def predictions(body: PredictionRequest) -> Predictions:
        """Predicted star ratings (0.5-5) of (user, movie) pairs."""
        users, movies = [p.user_id for p in body.pairs], [p.movie_id for p in body.pairs]
        ratings = rec.predict_ratings(users, movies)
        return Predictions(predictions=[Prediction(user_id=u, movie_id=m, predicted_rating=r)
                                        for u, m, r in zip(users, movies, ratings)])

    return app


def serve(rec: Recommender, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted. The loaded model and app are moved out of the garbage collector's
    sight first (``gc.freeze``): otherwise every full collection walks them again, which showed up
    as 30-40 ms stalls in the slowest 1% of requests under load."""
    import gc

    import uvicorn

    app = create_app(rec)
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
