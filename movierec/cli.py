"""The ``movierec`` command: recommendations from the installed (or a given) model bundle.

    movierec recommend --user 1 -k 10
    movierec history 50:5 181:4.5 -k 10
    movierec similar --movie 1
    movierec predict --user 1 --movie 50
    movierec info
    movierec serve --host 127.0.0.1 --port 8000     # the REST API (see movierec.api)

Unknown ids, bad arguments and a ratings store that cannot be opened print one line to stderr and
exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from movierec.serving import BACKENDS, Recommendation, Recommender, RecommenderError


def _parse_history(items: list[str]) -> list[int | tuple[int, float]]:
    out: list[int | tuple[int, float]] = []
    for item in items:
        movie, _, rating = item.partition(":")
        try:
            out.append((int(movie), float(rating)) if rating else int(movie))
        except ValueError:
            raise RecommenderError(f"bad history entry {item!r}: expected MOVIE_ID or MOVIE_ID:RATING") from None
    return out


def _print(recs: list[Recommendation], as_json: bool, score_label: str = "score") -> None:
    if as_json:
        print(json.dumps([r.to_dict() for r in recs], indent=2))
        return
    for rank, r in enumerate(recs, 1):
        year = f" ({r.year})" if r.year else ""
        rating = f"  predicted {r.predicted_rating:.2f}" if r.predicted_rating is not None else ""
        print(f"{rank:>3}. [{r.movie_id}] {r.title}{year} — {', '.join(r.genres) or 'no genres'}  "
              f"{score_label} {r.score:.3f}{rating}")


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def name_metaflow_user() -> None:
    """Name the Metaflow user "movierec" in a shell that names none Metaflow accepts (no
    METAFLOW_USER, SUDO_USER, USERNAME or USER, or only "root": a root container), as the flow
    does when it runs there (flows/recommender_flow.py), so the latest run it made is found."""
    if not any(os.environ.get(v, "root") != "root" for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")):
        os.environ["METAFLOW_USER"] = "movierec"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="movierec",
                                     description="Movie recommendations from a trained movierec model.")
    parser.add_argument("--model", default=None,
                        help="bundle folder or zip, or a Metaflow run id (default: the model packaged in this wheel)")
    parser.add_argument("--backend", choices=BACKENDS, default="numpy",
                        help="what runs the rating model: numpy (default, its folded tables), onnx (its ONNX "
                             "graph; pip install 'movierec[onnx]') or torch (the training code and its packages; "
                             "pip install 'movierec[train]'); all agree within 1e-4")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("recommend", help="top movies for a known user")
    r.add_argument("--user", type=int, required=True)
    r.add_argument("-k", type=int, default=10, help="how many (1-1000, default 10)")
    r.add_argument("--include-rated", action="store_true", help="also recommend movies the user already rated")
    r.add_argument("--json", action="store_true", help="print JSON")
    h = sub.add_parser("history", help="top movies for a new user, from movies they rated")
    h.add_argument("movies", nargs="+", metavar="MOVIE[:RATING]", help="movie ids, optionally with a 0.5-5 rating")
    h.add_argument("-k", type=int, default=10)
    h.add_argument("--json", action="store_true")
    s = sub.add_parser("similar", help="movies similar to a movie")
    s.add_argument("--movie", type=int, required=True)
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--json", action="store_true")
    p = sub.add_parser("predict", help="predicted rating of a movie for a known user")
    p.add_argument("--user", type=int, required=True)
    p.add_argument("--movie", type=int, required=True)
    sub.add_parser("info", help="which run, data and metrics the model comes from")
    v = sub.add_parser("serve", help="serve the REST API (OpenAPI at /docs) until interrupted")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--store", default="movierec-ratings.sqlite3", metavar="FILE|URL|none",
                   help="where the ratings users send (POST /ratings) are kept: a SQLite file (created if absent, "
                        "readable by its owner only; default movierec-ratings.sqlite3 here), "
                        "postgresql://user@host/db (password from PGPASSWORD or ~/.pgpass, never in the URL; "
                        "pip install 'movierec[postgres]'), or none (POST /ratings refused, nothing written)")
    v.add_argument("--body-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="answer 408 to a client that has not sent its whole request body within this time (default 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name_metaflow_user()
    try:
        rec = Recommender.load(args.model, args.backend)
        if args.command == "recommend":
            _print(rec.recommend(args.user, args.k, exclude_rated=not args.include_rated), args.json)
        elif args.command == "history":
            _print(rec.recommend_for_history(_parse_history(args.movies), args.k), args.json)
        elif args.command == "similar":
            _print(rec.similar_movies(args.movie, args.k), args.json, score_label="similarity")
        elif args.command == "serve":
            try:
                from movierec.api import serve
            except ImportError as exc:
                raise RecommenderError(f"serving needs the 'serve' extra: pip install 'movierec[serve]' ({exc})") \
                    from exc

            from movierec.feedback import InteractionStore, StoreError

            try:
                store = None if args.store == "none" else InteractionStore(args.store)
            except StoreError as exc:
                raise RecommenderError(f"--store {exc}") from None
            kept = f"ratings kept in {store.label}" if store is not None else "no ratings kept (--store none)"
            print(f"movierec: serving {rec.info.get('run_id', 'the model')} on http://{args.host}:{args.port} "
                  f"(API description: /docs), {kept}", file=sys.stderr, flush=True)
            serve(rec, args.host, args.port, args.body_timeout, store)
        elif args.command == "predict":
            print(f"{rec.predict_rating(args.user, args.movie):.2f}")
        else:
            print(json.dumps(rec.describe(), indent=2, default=str))
    except RecommenderError as exc:
        print(f"movierec: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
