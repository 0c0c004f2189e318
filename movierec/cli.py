"""The ``movierec`` command: recommendations from the installed (or a given) model bundle.

    movierec recommend --user 1 -k 10
    movierec history 50:5 181:4.5 -k 10
    movierec similar --movie 1
    movierec predict --user 1 --movie 50
    movierec info
    movierec serve --host 127.0.0.1 --port 8000     # the REST API (see movierec.serving.api)
    movierec keys add --users 1-100                 # an API key that may write ratings for users 1-100
    movierec --new-movies new.csv recommend --user 1  # movies added since training, recommendable too

Unknown ids, bad arguments and a ratings store that cannot be opened print one line to stderr and
exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from movierec.serving.recommender import BACKENDS, Recommendation, Recommender, RecommenderError


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


def _rate(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of writes per second, got {text}")
    return value


def _hosts(text: str) -> tuple[str, ...]:
    hosts = tuple(h.strip() for h in text.split(",") if h.strip())
    if not hosts:
        raise argparse.ArgumentTypeError("expected host names separated by commas, e.g. localhost,api.example.com")
    return hosts


def _keys_command(args: argparse.Namespace) -> None:
    """``movierec keys add|list|revoke``: the API keys a server lets write (movierec.serving.access)."""
    from movierec.serving.access import AccessError, KeyFile, parse_users

    keys = KeyFile(args.keys)
    try:
        if args.action == "add":
            users = parse_users(args.users) if args.users is not None else ()
            key, secret = keys.add(users, args.backend_key, args.name, args.rate)
            print(f"movierec: key {key.id} for {key.scope()} added to {keys.path}; its secret is shown this "
                  "once only (send it as 'Authorization: Bearer <secret>'):", file=sys.stderr)
            print(secret)
        elif args.action == "revoke":
            key = keys.revoke(args.id)
            print(f"movierec: key {key.id} revoked (servers reading {keys.path} refuse it within a second)",
                  file=sys.stderr)
        else:
            if not keys.keys():
                print(f"movierec: no keys in {keys.path} (movierec keys add makes one)", file=sys.stderr)
            for key in keys.keys():
                state = "revoked" if key.revoked is not None else "active"
                rate = f"{key.rate:g}/s" if key.rate else "server's rate"
                print(f"{key.id}\t{state}\t{key.scope()}\t{rate}\t{key.name}")
    except AccessError as exc:
        raise RecommenderError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="movierec",
                                     description="Movie recommendations from a trained movierec model.")
    parser.add_argument("--model", default=None,
                        help="bundle folder or zip, a Metaflow run id, or 'promoted': the latest run the promotion "
                             "gate let through (default: the model packaged in this wheel)")
    parser.add_argument("--backend", choices=BACKENDS, default="numpy",
                        help="what runs the rating model: numpy (default, its folded tables), onnx (its ONNX "
                             "graph; pip install 'movierec[onnx]') or torch (the training code and its packages; "
                             "pip install 'movierec[train]'); all agree within 1e-4")
    parser.add_argument("--new-movies", default=None, metavar="CSV",
                        help="movies added since training, recommendable without retraining (placed by the two-tower "
                             "model from their features): a CSV file like MovieLens' movies.csv, with a header "
                             "naming movieId and title, optionally genres (separated by |) and year")
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
    v.add_argument("--keys", default="movierec-keys.json", metavar="FILE",
                   help="the API keys that may write ratings (movierec keys add makes them; re-read within a second "
                        "of a change; default movierec-keys.json here). Writes without a valid key get 401")
    v.add_argument("--allowed-hosts", type=_hosts, default=None, metavar="NAME,...",
                   help="the Host names requests may be sent to, others get 400 (against DNS rebinding): names, "
                        "addresses (IPv6 without brackets, no ports), *.example.com, or * for any (default: localhost, "
                        "127.0.0.1, ::1 and --host unless it is 0.0.0.0 or ::); /health and /metrics answer any Host")
    v.add_argument("--read-key-required", action="store_true",
                   help="reads need an API key too (any valid key; default: reads are open); /, /health, /metrics "
                        "and the API description stay open")
    v.add_argument("--write-rate", type=_rate, default=10.0, metavar="PER_SECOND",
                   help="writes each key may make per second, in bursts of up to a second's worth (default 10; a "
                        "key's own rate, keys add --rate, overrides it); beyond it: 429 with Retry-After")
    k = sub.add_parser("keys", help="add, list or revoke the API keys that may write ratings through the REST API",
                       description="API keys for movierec serve: a key may write ratings for some users (--users) "
                                   "or for any user (--backend); only its SHA-256 is kept, in the keys file (mode "
                                   "0600), so its secret is printed once, when it is added.")
    k.add_argument("--keys", default="movierec-keys.json", metavar="FILE",
                   help="the keys file (default movierec-keys.json here, where movierec serve looks)")
    actions = k.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="a new key; prints its secret (once) on stdout")
    scope = add.add_mutually_exclusive_group(required=True)
    scope.add_argument("--users", metavar="RANGES", help="the users it may write for, e.g. 1-100,205")
    scope.add_argument("--backend", dest="backend_key", action="store_true",
                       help="a trusted backend: may write for any user")
    add.add_argument("--name", default="", help="what the key is for (shown by keys list)")
    add.add_argument("--rate", type=_rate, default=None, metavar="PER_SECOND",
                     help="its writes per second (default: the server's --write-rate)")
    actions.add_parser("list", help="every key: id, active or revoked, scope, rate, name (never a secret)")
    revoke = actions.add_parser("revoke", help="refuse a key from now on (kept in the file, marked revoked)")
    revoke.add_argument("id", help="the key's id (mr_ and 12 hex digits, as keys list shows)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name_metaflow_user()
    try:
        if args.command == "keys":  # no model needed
            _keys_command(args)
            return 0
        rec = Recommender.load(args.model, args.backend)
        if args.new_movies is not None:
            from movierec.serving.new_movies import read_new_movies

            added = rec.add_movies(read_new_movies(args.new_movies))
            print(f"movierec: {len(added)} new movies added from {args.new_movies}", file=sys.stderr)
        if args.command == "recommend":
            _print(rec.recommend(args.user, args.k, exclude_rated=not args.include_rated), args.json)
        elif args.command == "history":
            _print(rec.recommend_for_history(_parse_history(args.movies), args.k), args.json)
        elif args.command == "similar":
            _print(rec.similar_movies(args.movie, args.k), args.json, score_label="similarity")
        elif args.command == "serve":
            try:
                from movierec.serving.api import serve
            except ImportError as exc:
                raise RecommenderError(f"serving needs the 'serve' extra: pip install 'movierec[serve]' ({exc})") \
                    from exc

            from movierec.serving.access import LOOPBACK_HOSTS, Access, AccessError
            from movierec.serving.store import InteractionStore, StoreError

            try:
                store = None if args.store == "none" else InteractionStore(args.store)
            except StoreError as exc:
                raise RecommenderError(f"--store {exc}") from None
            wildcard = args.host in ("0.0.0.0", "::", "")
            bound = () if wildcard else (args.host,)
            try:
                access = Access(args.keys, args.allowed_hosts or (*LOOPBACK_HOSTS, *bound), args.read_key_required,
                                args.write_rate)
            except AccessError as exc:
                raise RecommenderError(str(exc)) from None
            kept = (f"ratings kept in {store.label}, written with a key from {args.keys}" if store is not None
                    else "no ratings kept (--store none)")
            print(f"movierec: serving {rec.info.get('run_id', 'the model')} on http://{args.host}:{args.port} "
                  f"(API description: /docs), {kept}", file=sys.stderr, flush=True)
            if wildcard and args.allowed_hosts is None:
                print(f"movierec: warning: --host {args.host or repr('')} listens on every address, but only requests "
                      "naming localhost, 127.0.0.1 or ::1 are answered: remote clients get 400 (all but /health and "
                      "/metrics); pass --allowed-hosts with the names they use, e.g. --allowed-hosts "
                      "api.example.com,10.0.0.5",
                      file=sys.stderr, flush=True)
            if store is not None and not access.active_keys():
                print(f"movierec: no active API key in {args.keys}, so every POST /ratings gets 401: "
                      f"movierec keys add --keys {args.keys} --users RANGES (or --backend) makes one",
                      file=sys.stderr, flush=True)
            serve(rec, args.host, args.port, body_timeout=args.body_timeout, store=store, access=access)
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
