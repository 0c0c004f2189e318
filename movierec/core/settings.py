"""Every setting of a run, as typed, frozen dataclasses: one per concern, all under :class:`Settings`.

A field made with :func:`setting` is a user setting: it can be set in a configuration file
(``retrieval.epochs``) and on the flow's command line (``--retrieval-epochs``), and its default,
help, bounds and choices live here, next to the field, and nowhere else (``movierec.training.flowconfig``
derives the Metaflow Config checks and Parameters from them). Other fields are model constants
a user does not tune per run. Adding a setting is one field here (see the README).

Importable without torch or Ray: every step process reads its settings, and importing torch costs
each of them 1.5 s.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from movierec.core.protocols import PROTOCOLS

RETRIEVAL_MODELS = ("two_tower", "lightgcn")
RETRIEVAL_NAMES = {"two_tower": "two-tower", "lightgcn": "LightGCN"}  # as reports print them
# Per-model defaults. LightGCN's free embeddings take larger steps, and its validation score
# rises slowly and noisily, so it needs more patience (with 2 it stopped 2-6 epochs early). The
# two-tower's score on ML-100K plateaus for two epochs around epoch 5 and then rises again for
# five or six (validation DCG 0.211 -> 0.216 on tfrs): with a patience of 2 it stopped on the
# plateau in one run of two, at 0.02-0.03 less retrieval nDCG@10.
#
# The two-tower with a ratings user tower (``user_tower="ratings"``) trains a batch of users a step
# (RATINGS_BATCH) with a softmax over the whole catalogue, and its validation score climbs slowly
# and noisily for 40-80 epochs on ML-100K (best epochs 29-97 on the three test beds of
# benchmarks/testbeds.py; patience 5 stopped it 0.01-0.04 nDCG@10 early): it keys these tables
# as "ratings_tower" (RetrievalConfig.variant).
DEFAULT_LR = {"two_tower": 3e-3, "ratings_tower": 1e-3, "lightgcn": 1e-2}
DEFAULT_PATIENCE = {"two_tower": 3, "ratings_tower": 20, "lightgcn": 5}
DEFAULT_EPOCHS = {"two_tower": 15, "ratings_tower": 200, "lightgcn": 15}
# The ratings tower's vectors at 64 dimensions ranked 0.01-0.04 nDCG@10 lower than at 200 (ML-100K
# and the synthetic 600 x 10,000 bed), the size Mult-DAE's layers narrow to.
DEFAULT_DIM = {"two_tower": 64, "ratings_tower": 200, "lightgcn": 64}
USER_TOWERS = ("features", "ratings")
# Users per step of the ratings tower: its learning rate is set at 128 (scaled by the square root
# of the batch over it, as the pair-trained models' at 1,024 pairs).
RATINGS_BATCH = 128
# ML-100K's epoch of the ratings tower is 7 steps of 128 users: DEFAULT_PATIENCE and DEFAULT_EPOCHS
# count epochs of about that size. An epoch of ML-20M is ~1,080 steps, and its validation score
# peaked in the second (0.1618 after one, 0.1635 after two, flat for three more; 6 min an epoch on
# 2 cores), so 20 epochs of patience would wait two hours on a plateau. Where an epoch has more
# steps, both count the same number of steps instead, the patience at least one epoch and the cap
# at least RATINGS_MIN_EPOCHS, so that early stopping, not the cap, ends a run on large data.
RATINGS_REFERENCE_STEPS = 7
RATINGS_MIN_EPOCHS = 10
# Automatic retrieval batches: 1,024 pairs (what the defaults were tuned at) until an epoch has
# 4,096 steps of them, then doubling with the data (2,048-4,095 steps an epoch) up to 4,096:
# with the loss compiled, 4,096 pairs with 1,024 shared negatives trained fastest on 2 cores
# (benchmarks/training.py), and fewer, larger steps learn less per epoch.
MIN_AUTO_BATCH, MAX_AUTO_BATCH, AUTO_STEPS = 1024, 4096, 2048
# On a GPU a step of up to ~16k pairs costs about the same few milliseconds (launches, not
# arithmetic): on an H200 8,192 pairs trained at 1.5M examples/s, 16,384 at 2.9M and 65,536 at 7.8M
# (benchmarks/training.py --device cuda). So batches double from 1,024 steps an epoch, up to 65,536.
GPU_MAX_AUTO_BATCH, GPU_AUTO_STEPS = 65536, 1024
PRECISIONS = ("auto", "fp32", "bf16")
# Epoch size (pairs) from which compiling the retrieval loss (~4 s) pays: on ML-100K's 76k pairs
# a compiled run took as long as an eager one; at ML-20M size a compiled bf16 step of 8,192 pairs
# ran 2.8x faster than an eager one (benchmarks/training.py: 66k -> 188k examples/s).
COMPILE_FROM = 1_000_000
# Candidates the retrieval stage hands the ranking stage, in evaluation and in serving alike.
CANDIDATES = 100
LOCAL_SEARCH_EXAMPLES = 5_000_000  # see RaySettings.uses_ray_tune
LOOPBACK = ("localhost", "127.0.0.1", "::1")
# The backends a Metaflow @secrets source names (Metaflow's SECRETS_PROVIDERS, but its "inline" one
# for tests), written "<backend>.<secret id>".
SECRETS_BACKENDS = ("aws-secrets-manager", "gcp-secret-manager", "az-key-vault")


def setting(default: Any, option: str, help: str, *, minimum: int | None = None, choices: tuple[str, ...] = (),
            check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field that is a user setting: its command-line ``option`` (without ``--``; ""
    for a setting of the configuration file only), a ``help`` line, and what values it takes (an
    integer ``minimum``, ``choices``, or a ``check`` returning what is wrong with a value)."""
    return field(default=default, metadata={"option": option, "help": help, "minimum": minimum,
                                            "choices": choices, "check": check})


def repository_url_problem(url: str) -> str | None:
    """What is wrong with a package repository URL, or None: it must not hold credentials
    (Metaflow stores and prints settings; they belong in TWINE_USERNAME/TWINE_PASSWORD), and must
    be https unless the server is on this machine."""
    if not url:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        credentials = parts.username is not None or parts.password is not None
    except ValueError as exc:  # e.g. an unclosed [IPv6 address]: urlsplit's message holds no part of the URL
        return f"is not a valid URL ({exc})"
    if credentials:
        return ("must not hold credentials (they would be stored with the run and printed): set TWINE_USERNAME "
                "and TWINE_PASSWORD instead")
    why = fetch_url_problem(url)
    return None if why is None else f"{why}, got {url}"


def fetch_url_problem(url: str) -> str | None:
    """What is wrong with a URL publishing talks to (a repository, a link on its index), or None:
    https, or plain http to this machine only, where nothing on the way can read or change it;
    nothing else urllib would open (file:, ftp:, data:)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError as exc:  # e.g. an unclosed [IPv6 address]: urlsplit's message holds no part of the URL
        return f"is not a valid URL ({exc})"
    if parts.scheme == "https" or parts.scheme == "http" and host in LOOPBACK:
        return None
    return "must be https:// (plain http only on loopback)"


def secret_source_problem(source: str) -> str | None:
    """What is wrong with a Metaflow ``@secrets`` source, or None: it must name its backend. A
    bare id takes Metaflow's default backend type, which is usually not set in the containers:
    the flow deployed, and every step with the secret then failed at ``@secrets``."""
    backend, dot, secret_id = source.partition(".")
    if not source or (dot and backend in SECRETS_BACKENDS and secret_id):
        return None
    return (f"must name its backend as <backend>.<secret id> (backend one of {', '.join(SECRETS_BACKENDS)}; e.g. "
            f"aws-secrets-manager.{secret_id or source}), got {source!r}")


@dataclass(frozen=True)
class ColumnSettings:
    """Which columns of a user's own interactions file (``--data-dir ratings.parquet`` or ``.csv``)
    and items file (``--items-file``) hold what (``movierec.data.load_interactions``)."""

    user: str = setting("user", "user-column", "interactions file: the user id column (integer ids)")
    item: str = setting("item", "item-column", "interactions file (and items file): the item id column (integers)")
    rating: str = setting("rating", "rating-column", "interactions file: the rating column (0.5-5 stars); empty: "
                          "none, implicit-only data (no rating model, no RMSE)")
    timestamp: str = setting("timestamp", "timestamp-column", "interactions file: the time column (integer "
                             "seconds); empty: none (every protocol but temporal)")
    title: str = setting("title", "title-column", "items file: the title column (a trailing '(1995)' is the year)")
    genres: str = setting("genres", "genres-column", "items file: the genres column (a list, or text split by "
                          "--genres-separator; empty: none)")
    genres_separator: str = setting("|", "genres-separator", "items file: what separates genres in a text column")


SECRET_KEYS = ("password", "sslpassword")  # libpq's connection keywords that hold a secret
HOLDS_SECRET = ("must not hold a password (user:password@, ?password= or ?sslpassword=: it would be stored with the "
                "run and printed): set PGPASSWORD or ~/.pgpass instead")


def database_url_problem(url: str) -> str | None:
    """What is wrong with a database URL, or None: PostgreSQL only, and no password anywhere in it
    (the URL is stored and printed with the run; libpq reads PGPASSWORD or ~/.pgpass). Read as
    libpq reads it (psycopg's conninfo), which also takes ``?password=`` and percent-encoded keys;
    a secret is looked for before libpq parses, as its parse errors quote the offending text."""
    if not url:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError as exc:  # e.g. an unclosed [IPv6 address]: urlsplit's message holds no part of the URL
        return f"is not a valid PostgreSQL URL ({exc})"
    if parts.scheme not in ("postgresql", "postgres"):
        return f"must be a postgresql:// URL, got {redact_url(url)}"
    if password is not None or any(map(_secret_parameter, parts.query.split("&"))):
        return HOLDS_SECRET
    try:
        from psycopg import conninfo
    except ImportError:
        return "needs psycopg to be read: pip install 'movierec[postgres]'"
    try:
        options = conninfo.conninfo_to_dict(url)
    except Exception as exc:  # psycopg.ProgrammingError: what libpq could not read
        return f"is not a valid PostgreSQL URL ({str(exc).strip().splitlines()[0]})"
    return HOLDS_SECRET if any(key in options for key in SECRET_KEYS) else None


def redact_url(location: str) -> str:
    """``location`` as it may be printed or stored: a URL's password, and the values of its
    ``password``/``sslpassword`` query parameters, replaced by ``***`` (anything else unchanged,
    byte for byte). A checked URL holds none; this keeps one that slipped past out of logs."""
    try:
        parts = urllib.parse.urlsplit(location)
    except ValueError:  # not a URL that can be read: nothing of it is printed
        return "<a malformed URL>"
    if not parts.scheme or not parts.netloc and not parts.query:
        return location
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = "&".join(f"{piece.partition('=')[0]}=***" if _secret_parameter(piece) else piece
                     for piece in parts.query.split("&"))
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _secret_parameter(piece: str) -> bool:
    """Whether ``name=value`` of a URL's query sets a secret (its name percent-decoded, as libpq reads it)."""
    return urllib.parse.unquote_plus(piece.partition("=")[0]).lower() in SECRET_KEYS


UNKEYED = "unkeyed"  # --feedback-leave-out's name for stored ratings no API key wrote (written_by '')


def key_ids_problem(text: str) -> str | None:
    """What is wrong with a comma-separated list of API key ids (``movierec.serving.access``: mr_ and 12
    hex digits, as ``movierec keys list`` shows them) or UNKEYED, or None."""
    bad = [part for part in text.split(",") if part.strip() != UNKEYED
           and not re.fullmatch(r"mr_[0-9a-f]{12}", part.strip())] if text else []
    return (f"expected API key ids (mr_ and 12 hex digits, as movierec keys list shows) or {UNKEYED}, separated by "
            f"commas; got {', '.join(map(repr, bad))}") if bad else None


def key_ids(text: str) -> frozenset[str]:
    """The ``written_by`` values a --feedback-leave-out list names ('' for UNKEYED)."""
    return frozenset("" if part.strip() == UNKEYED else part.strip() for part in text.split(",") if part.strip())


def store_problem(location: str) -> str | None:
    """What is wrong with an interaction store's location: a database URL is checked as one (a
    file path is checked when it is opened)."""
    return database_url_problem(location) if location.startswith(("postgresql://", "postgres://")) else None


@dataclass(frozen=True)
class DataSettings:
    dir: str = setting("", "data-dir", "MovieLens folder (ratings.csv+movies.csv, ml-1m/ml-10m .dat, ml-100k's "
                       "u.data+u.item+u.user, recbole ml-100k files, or Kaggle's The Movies Dataset) or a .zip of "
                       "one, local or s3://bucket/prefix (read with Metaflow's S3 client); empty: ML-100K, "
                       "downloaded once into data/ml-100k")
    synthetic_ratings: int = setting(0, "synthetic-ratings", "use N synthetic ML-20M-shaped ratings (0: off)",
                                     minimum=0)
    max_ratings: int = setting(0, "max-ratings", "keep only the first N ratings by time (0: all)", minimum=0)
    items_file: str = setting("", "items-file", "titles and genres for an interactions file (Parquet or CSV, "
                              "columns as --item-column, --title-column, --genres-column say); empty: none")
    columns: ColumnSettings = field(default_factory=ColumnSettings)
    source: str = setting("", "data-source", "read the data from PostgreSQL instead: postgresql://user@host:port/db "
                          "(the password from PGPASSWORD or ~/.pgpass, never in the URL), with --ratings-query, "
                          "--movies-query and --users-query", check=database_url_problem)
    ratings_query: str = setting("SELECT user_id, item_id, rating, timestamp FROM ratings", "ratings-query",
                                 "--data-source: the ratings, as (user id, movie id, 0.5-5 stars, time in seconds or "
                                 "a timestamp) columns in that order")
    movies_query: str = setting("SELECT item_id, title, genres FROM movies", "movies-query", "--data-source: the "
                                "movies, as (id, title, genres: a text[] or '|'-separated text); empty: none")
    users_query: str = setting("", "users-query", "--data-source: the users, as (id, age, gender, occupation); "
                               "empty: none")
    feedback_store: str = setting("", "feedback-store", "the ratings users sent to the REST API (movierec serve "
                                  "--store: a SQLite file or postgresql://user@host/db): added to the data, a later "
                                  "rating of the same movie replacing the earlier; empty: none",
                                  check=store_problem)
    feedback_leave_out: str = setting("", "feedback-leave-out", "API keys whose ratings in --feedback-store are left "
                                      f"out of training (ids, mr_ and 12 hex digits as movierec keys list shows, "
                                      f"comma-separated; {UNKEYED}: rows no key wrote), e.g. a key that sent fake "
                                      "ratings; the start card counts the store's rows per key", check=key_ids_problem)


@dataclass(frozen=True)
class RetrievalConfig:
    """The retrieval model and how it trains (``movierec.training.retrieval``); kept in the model bundle."""

    model: str = setting("two_tower", "retrieval-model", "retrieval model: two_tower (id + feature towers) or "
                         "lightgcn (graph propagation over the user-movie interactions)", choices=RETRIEVAL_MODELS)
    user_tower: str = setting("features", "user-tower", "the two-tower's user tower: features (the user's id, age, "
                              "gender and occupation; trained on (user, movie) pairs against in-batch negatives) or "
                              "ratings (the movies the user rated, through one hidden layer, no id; trained a batch "
                              "of users at a time with a softmax over the whole catalogue)", choices=USER_TOWERS)
    dim: int = setting(0, "embedding-dim", "retrieval embedding size; 0: the model's own, 64 (200 for the ratings "
                       "user tower)", minimum=0)
    hidden: int = 128  # two-tower MLP width
    # The ratings tower's hidden layer and the share of a user's rated movies it drops in training
    # (Mult-DAE's 600 and a denoising dropout; 0.5 gave 0.004-0.01 less nDCG@10 on ML-100K than 0.7).
    ratings_hidden: int = 600
    ratings_dropout: float = 0.7
    layers: int = 3  # LightGCN propagation steps
    temperature: float = 0.2
    lr: float | None = None  # None: DEFAULT_LR of the model
    weight_decay: float = 1e-6
    batch_size: int = setting(0, "retrieval-batch-size", "training pairs per step and worker (at most a worker's "
                              "share of the pairs); 0: by the data's size (1,024 up to 4M training pairs per worker, "
                              "doubling with them up to 4,096; on a GPU from 2M pairs up to 65,536). The learning rate "
                              "is scaled by the square root of the batch over 1,024. With the ratings user tower: "
                              "users per step (0: 128, the rate's reference)", minimum=0)
    negatives: int = setting(1024, "negatives", "the first N movies of each shuffled batch are every pair's shared "
                             "negatives (all of the batch when smaller): the softmax's cost per pair stays fixed as "
                             "batches grow", minimum=1)
    precision: str = setting("auto", "precision", "training arithmetic: bf16 (autocast; the CPU needs AVX-512 BF16 "
                             "or AMX, a GPU bf16 support), fp32, or auto (bf16 where supported)", choices=PRECISIONS)
    compile: str = setting("auto", "compile", "compile the training loss with torch.compile, fusing its elementwise "
                           "work: on, off, or auto (on when an epoch has 1M pairs or more, which repay the seconds "
                           "compiling takes). On CPU it needs a C++ compiler; without one, training runs uncompiled "
                           "and says so", choices=("auto", "on", "off"))
    epochs: int = setting(0, "retrieval-epochs", "most retrieval epochs (stops early when validation quality "
                          "stalls); 0: the model's own, 15 (200 for the ratings user tower, whose epochs are short "
                          "and whose validation score climbs slowly; where an epoch is longer than ML-100K's 7 "
                          "steps, that many steps' worth, at least 10)", minimum=0)
    patience: int | None = None  # epochs without improvement before stopping (None: DEFAULT_PATIENCE);
    # the best epoch's weights are kept
    val_fraction: float = 0.05  # of train, never test
    # One worker with every CPU of the step by default: on one machine a second worker only adds
    # a gradient exchange per step (on ML-100K, 1 x 2 threads trained 10% faster than 2 x 1).
    workers: int = setting(1, "retrieval-workers", "Ray Train data-parallel workers (each gets an equal share of "
                           "the step's CPUs; more than one pays off across machines)", minimum=1)
    gpus_per_worker: int = setting(0, "gpus-per-worker", "1: each Ray Train worker trains on a GPU of its own (0: on "
                                   "CPU); the Ray cluster must have them and torch must be a CUDA build", minimum=0,
                                   check=lambda v: None if v <= 1 else f"must be 0 or 1 (a worker trains on one GPU; "
                                   f"more GPUs: more --retrieval-workers), got {v}")
    # The user tower (and the rating model) also see the movies the user rated in train
    # (SVD++-style). Off by default: on ML-100K it moved NDCG@10 by +0.002, and it halves throughput.
    history: bool = setting(False, "history", "both models also see each user's 50 latest rated movies "
                            "(SVD++-style): about +0.002 NDCG@10 on ML-100K for half the training speed")
    max_history: int = 50  # most recent rated movies per user in that history

    def __post_init__(self) -> None:
        if self.model not in RETRIEVAL_MODELS:
            raise ValueError(f"retrieval model must be one of {', '.join(RETRIEVAL_MODELS)}, got {self.model!r}")
        if self.user_tower not in USER_TOWERS:
            raise ValueError(f"user tower must be one of {', '.join(USER_TOWERS)}, got {self.user_tower!r}")

    @property
    def variant(self) -> str:
        """What the per-model defaults are keyed by: the model, or "ratings_tower" for the two-tower
        with a ratings user tower, which trains differently (see DEFAULT_LR)."""
        return "ratings_tower" if self.per_user else self.model

    @property
    def per_user(self) -> bool:
        """Whether training steps over batches of users (the ratings tower), not of (user, movie) pairs."""
        return self.model == "two_tower" and self.user_tower == "ratings"

    def embedding_dim(self) -> int:
        """``dim``, or the model's own default where it is 0."""
        return self.dim or DEFAULT_DIM[self.variant]

    def max_epochs(self, steps_per_epoch: int = 0) -> int:
        """``epochs``, or the model's own default where it is 0 (for the ratings tower, by the
        ``steps_per_epoch`` of the data: see RATINGS_REFERENCE_STEPS)."""
        return self.epochs or self._in_steps(DEFAULT_EPOCHS[self.variant], steps_per_epoch, RATINGS_MIN_EPOCHS)

    @property
    def name(self) -> str:
        """The model's name as reports print it."""
        return RETRIEVAL_NAMES[self.model]

    def batch_for(self, n_pairs: int) -> int:
        """Pairs per step on ``n_pairs`` training pairs (users per step for the ratings tower, 128 by
        default): ``batch_size``, or by the data's size. Small
        data needs many steps per epoch to converge in few epochs; on large data bigger batches
        spread each step's fixed cost (Python, optimizer, kernel launches) over more pairs."""
        if self.batch_size:
            return self.batch_size
        if self.per_user:
            return RATINGS_BATCH
        cap, steps = (GPU_MAX_AUTO_BATCH, GPU_AUTO_STEPS) if self.gpus_per_worker else (MAX_AUTO_BATCH, AUTO_STEPS)
        return min(cap, max(MIN_AUTO_BATCH, 2 ** ((n_pairs // steps).bit_length() - 1)))

    def compiles(self, epoch_pairs: int) -> bool:
        """Whether training compiles its loss, for epochs of ``epoch_pairs`` pairs (see ``compile``)."""
        return self.compile == "on" or (self.compile == "auto" and epoch_pairs >= COMPILE_FROM)

    def learning_rate(self, batch: int = MIN_AUTO_BATCH) -> float:
        """The set or default rate, scaled by sqrt(batch / 1024) (the defaults were chosen at 1024):
        Adam's updates average the batch's gradients, whose noise falls with its square root."""
        return self.base_lr() * (batch / (RATINGS_BATCH if self.per_user else MIN_AUTO_BATCH)) ** 0.5

    def base_lr(self) -> float:
        """The set rate or the model's default, at the batch the defaults were chosen at."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.variant]

    def stop_after(self, steps_per_epoch: int = 0) -> int:
        """Epochs without improvement before training stops: ``patience``, or the model's own
        default (for the ratings tower, by the ``steps_per_epoch`` of the data)."""
        if self.patience is not None:
            return self.patience
        return self._in_steps(DEFAULT_PATIENCE[self.variant], steps_per_epoch, 1)

    def _in_steps(self, epochs: int, steps_per_epoch: int, least: int) -> int:
        """A default of ``epochs`` ratings-tower epochs of RATINGS_REFERENCE_STEPS steps, as epochs of
        ``steps_per_epoch`` steps (at least ``least``); other models' defaults count epochs alone."""
        if not self.per_user or steps_per_epoch <= RATINGS_REFERENCE_STEPS:
            return epochs
        return max(least, -(-epochs * RATINGS_REFERENCE_STEPS // steps_per_epoch))


@dataclass(frozen=True)
class RetrievalSearchConfig:
    """Ray Tune's search over the retrieval model's settings (``movierec.training.retrieval_search``):
    off by default, as it multiplies the step's training time; the settings it chooses are kept in
    ``RetrievalConfig`` and the model bundle."""

    trials: int = setting(0, "retrieval-trials", "choose the retrieval model's embedding size, temperature, learning "
                          "rate, weight decay and negatives for this data: N Ray Tune trials, the weaker stopped "
                          "early (ASHA on validation DCG), then the model trains with the best trial's settings "
                          "(0: the configured settings, no search)", minimum=0)
    epochs: int = setting(8, "retrieval-trial-epochs", "most epochs a retrieval trial trains (ASHA compares trials "
                          "at epochs 2, 6, 18, ... below this, and stops the weaker two thirds)",
                          minimum=1)
    trial_pairs: int = setting(2_000_000, "retrieval-trial-pairs", "retrieval trials learn from a sample of at most "
                               "this many training pairs (bounding the search's training on large data; validation "
                               "still scores every movie)", minimum=1)


@dataclass(frozen=True)
class SourcesConfig:
    """The candidate sources beside the retrieval model (``movierec.models.sources``): each source's
    switch (the field named as the source) and its grid, searched on the retrieval model's
    validation pairs. The source class reads its own fields."""

    ease: bool = setting(True, "ease", "EASE item-item model as a candidate source")
    ease_max_items: int = setting(10_000, "ease-max-items", "EASE covers at most this many of the most-rated "
                                  "movies (its weights are a dense square matrix of them)", minimum=1)
    ease_lambdas: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0, 2000.0)
    als: bool = setting(True, "als", "implicit-feedback ALS as a candidate source")
    als_factors: tuple[int, ...] = (32, 64, 128)
    # implicit does not scale λ by counts: on ML-100K the best values are 10-50 (nDCG@10 0.48 on
    # msr against 0.36 at λ = 0.1), so the grid spans two decades above the library's default
    als_regularization: tuple[float, ...] = (1.0, 10.0, 50.0)
    als_alpha: tuple[float, ...] = (1.0, 5.0)
    als_iterations: int = 15
    rp3beta: bool = setting(False, "rp3beta", "RP3beta random-walk item-item model as a candidate source")
    rp3beta_max_items: int = setting(10_000, "rp3beta-max-items", "RP3beta covers at most this many of the "
                                     "most-rated movies (its weights are a dense square matrix of them, as "
                                     "EASE's)", minimum=1)
    rp3beta_alphas: tuple[float, ...] = (0.5, 0.75, 1.0)
    rp3beta_betas: tuple[float, ...] = (0.0, 0.25, 0.5)
    search_users: int = 20_000  # the grids are searched on at most this many users' ratings


@dataclass(frozen=True)
class RankerConfig:
    """The second stage (``movierec.models.second_stage``)."""

    candidates: int = setting(CANDIDATES, "ranker-candidates", "candidates each source hands the ranker; it orders "
                              "their union", minimum=1)


@dataclass(frozen=True)
class TuneConfig:
    """The rating model's hyper-parameter search (``movierec.training.rating_search``: with Ray Tune, or in
    the step's process on small data, see ``RaySettings.uses_ray_tune``)."""

    samples: int = setting(6, "tune-samples", "trials of the rating model's search", minimum=1)
    epochs: int = setting(8, "tune-epochs", "most epochs a trial may train (ASHA stops early)", minimum=1)
    trial_ratings: int = setting(1_000_000, "tune-trial-ratings", "trials train on a sample of at most this many "
                                 "ratings; on larger data the best settings are then refitted once on all of them",
                                 minimum=1)
    val_fraction: float = 0.1  # of train, never test
    max_validation: int = 200_000  # a stable validation RMSE at any data size, cheap every epoch
    trials_per_gpu: int = setting(0, "tune-trials-per-gpu", "Ray Tune trials sharing one GPU (0: trials run on CPU); "
                                  "more than 0 always searches with Ray Tune",
                                  minimum=0)
    blend: bool = setting(True, "rating-blend", "blend the chosen rating model with biased matrix factorisation "
                          "(ALS), the weight fitted on the validation ratings")
    mf_factors: int = 64
    mf_regularization: tuple[float, ...] = (0.05, 0.1, 0.2)  # ALS-WR: per rating, so it carries across sizes
    mf_iterations: int = 10


@dataclass(frozen=True)
class IndexSettings:
    """The Annoy index over movie vectors (``movierec.models.index``); kept in the model bundle."""

    n_trees: int = setting(50, "n-trees", "Annoy trees (more: better recall, bigger index)", minimum=1)
    search_k: int = -1  # Annoy's default: n_trees * k nodes inspected per query
    metric: str = "angular"  # unit vectors: angular distance orders as the dot product does


@dataclass(frozen=True)
class RaySettings:
    address: str = setting("", "ray-address", "join this Ray cluster instead of starting one (empty: start one)")
    num_cpus: int = setting(2, "num-cpus", "CPUs the local Ray instances use: train_retrieval, which runs beside "
                            "tune_ranking, takes half of them; in RecommenderClusterFlow's train_on_cluster, the CPUs "
                            "of each node", minimum=1)
    nodes: int = setting(2, "ray-nodes", "Ray nodes RecommenderClusterFlow forms for train_on_cluster with "
                         "@metaflow_ray, one container each (RecommenderFlow ignores it)", minimum=1)
    train: str = setting("auto", "ray-train", "auto: the retrieval model trains with Ray Train when that spreads it "
                         "(more than one --retrieval-workers, or a cluster to join with --ray-address), and one local "
                         "worker trains in the step's own process, the same loop without Ray Train's start-up; "
                         "always: with Ray Train in every case", choices=("auto", "always"))
    tune: str = setting("auto", "ray-tune", "auto: the rating model's search runs its trials with Ray Tune when that "
                        f"pays (a cluster to join with --ray-address, or more than {LOCAL_SEARCH_EXAMPLES:,} "
                        "training examples over all trials: samples x epochs x trial ratings), and otherwise one "
                        "after another in the step's own process, with the same search space and early-stopping "
                        "rule (ASHA) but without Ray's start-up; always: with Ray Tune in every case",
                        choices=("auto", "always"))

    def beside_tuning(self) -> RaySettings:
        """train_retrieval's settings: it runs at the same time as tune_ranking on the same machine,
        so it takes half of ``num_cpus`` (the odd one too; at least one). Both told the whole
        machine ran 4 torch threads on 2 cores, and threads of one op that wait for a core spin. A
        Ray Tune search keeps them all: its trials are one thread each, which share cores cleanly,
        and it runs 2-3x longer than retrieval (1M ratings: 270 s against 110 s), so a fixed half
        left a core idle for most of it; a search in tune_ranking's own process takes the rest
        (``beside_retrieval``). A cluster (``address``) schedules its own CPUs."""
        if self.address:
            return self
        return replace(self, num_cpus=-(-self.num_cpus // 2))

    def beside_retrieval(self) -> RaySettings:
        """tune_ranking's settings when its search runs in the step's own process (``uses_ray_tune``)
        beside train_retrieval: the CPUs train_retrieval leaves (``beside_tuning``), at least one.
        Its trials then train one after another, each on all of those threads; told the whole
        machine, its threads and retrieval's waited on each other's cores (ML-100K: trials at 25k
        examples/s instead of 85k)."""
        if self.address:
            return self
        return replace(self, num_cpus=max(1, self.num_cpus - self.beside_tuning().num_cpus))

    def uses_ray_train(self, workers: int) -> bool:
        """Whether ``workers`` retrieval workers train with Ray Train (``train``). One local worker
        has nothing to spread: Ray Train would only start a Ray instance, a controller and a worker
        process around the same loop, 15-25 s on a 2-core machine where ML-100K's epochs take 3 s."""
        return self.train == "always" or workers > 1 or bool(self.address)

    def uses_ray_tune(self, examples: int) -> bool:
        """Whether the rating search, ``examples`` training examples over all its trials at most,
        runs with Ray Tune (``tune``). Ray's start-up and a worker process per trial cost 20-25 s
        on a 2-core machine, where ML-100K's default search (3.84M examples at most, ASHA stops
        about half) trains in ~35 s on one thread: running trials side by side pays only once the
        search takes minutes (``LOCAL_SEARCH_EXAMPLES``: ~1 min at the ~85k examples/s of one
        thread). Calibrated on 2 cores; with many more CPUs, Ray Tune's side-by-side trials pay
        sooner (``--ray-tune always``)."""
        return self.tune == "always" or bool(self.address) or examples > LOCAL_SEARCH_EXAMPLES


@dataclass(frozen=True)
class PublishSettings:
    user_data: bool = setting(True, "publish-user-data", "put every user's rated movies, vectors and model rows "
                              "into the published wheel; false: it answers history-based requests only (for data "
                              "whose users must not travel with the model)")
    repository_url: str = setting("", "repository-url", "package index to upload the wheel to with twine: https "
                                  "(http on loopback only), credentials in TWINE_USERNAME/TWINE_PASSWORD, never in "
                                  "the URL; empty: the local PEP 503 index in --index-dir",
                                  check=repository_url_problem)
    index_dir: str = setting("", "index-dir", "local package index folder (a PEP 503 index: packages/ and simple/); "
                             "empty: dist/pypi beside the movierec source")


def tolerance_problem(value: float) -> str | None:
    return None if 0 <= value <= 1 else f"must be from 0 to 1, got {value}"


@dataclass(frozen=True)
class PromotionSettings:
    """The promotion gate in ``publish`` (``movierec.training.promotion``): the new model is published
    either way, and tagged ``promoted`` only when it is not worse than the champion beyond these."""

    ndcg_tolerance: float = setting(0.01, "promotion-ndcg-tolerance", "promote only when the new model's nDCG@10 on "
                                    "its test split is at most this far below the champion's there",
                                    check=tolerance_problem)
    rmse_tolerance: float = setting(0.01, "promotion-rmse-tolerance", "promote only when the new model's RMSE on "
                                    "its test split is at most this far above the champion's there",
                                    check=tolerance_problem)
    champion: str = setting("", "champion", "the run whose published model the new one is gated against: a "
                            "RecommenderFlow run id or pathspec; empty: the newest run of this flow tagged 'promoted' "
                            "in this namespace (none yet: the first model is promoted)")
    override: bool = setting(False, "promote-anyway", "promote even where the gate finds a regression (the card "
                             "and the run's 'promotion-override' tag record it)")


@dataclass(frozen=True)
class DeploySettings:
    """What each step asks Kubernetes or AWS Batch for (the image, Metaflow's ``@resources``,
    ``@timeout``, ``@retry`` and ``@secrets``, added to the steps by ``flowconfig.configured``) and
    when a deployment retrains.
    Decorators are fixed when a flow is deployed, before any Parameter has a value, so these live in
    the configuration file only (no command-line option). The Ray steps also ask for
    ``ray.num_cpus`` CPUs (set it in the file too for remote runs: Ray is told that number) and the
    GPUs the retrieval and Tune settings use. Local runs ignore them, apart from the timeout."""

    cpu: int = setting(2, "", "CPUs of each step that runs no Ray (start, split, build_index, train_ranker, "
                       "evaluate, publish, end)", minimum=1)
    memory: int = setting(8192, "", "memory (MB) of each step that runs no Ray", minimum=512)
    ray_memory: int = setting(16384, "", "memory (MB) of each Ray step (train_retrieval, tune_ranking, "
                              "train_on_cluster); a third of it is the container's /dev/shm, where Ray keeps its "
                              "object store", minimum=1024)
    timeout_hours: int = setting(24, "", "a step still running after this many hours is stopped", minimum=1)
    retries: int = setting(2, "", "times a step on Kubernetes or AWS Batch is retried after a failure (start, the "
                           "Ray steps and publish: those a lost node or a storage error can fail); local runs, where "
                           "a failure is a bug or bad data that a retry would only repeat, never retry", minimum=0)
    schedule: str = setting("", "", "retrain a deployed flow (Argo Workflows, Step Functions) hourly, daily or "
                            "weekly (Metaflow's @schedule); empty: only when triggered",
                            choices=("", "hourly", "daily", "weekly"))
    image: str = setting("", "", "the container image every step runs in on Kubernetes or AWS Batch (the "
                         "Dockerfile's, pushed to a registry); required there: Metaflow's default, python:3.11, has "
                         "neither torch nor Ray")
    ray_token_secret: str = setting("", "", "Metaflow @secrets source (<backend>.<id>, e.g. aws-secrets-manager."
                                    "movierec-ray) holding RAY_AUTH_TOKEN, the token the nodes of "
                                    "RecommenderClusterFlow's Ray cluster share (Ray refuses a node without it); "
                                    "required to run that flow on Kubernetes or AWS Batch", check=secret_source_problem)
    publish_secret: str = setting("", "", "Metaflow @secrets source (<backend>.<id>) holding TWINE_USERNAME and "
                                  "TWINE_PASSWORD for publish.repository_url, given to the publish step on Kubernetes "
                                  "or AWS Batch (a local run reads its own environment); empty: publish reads them "
                                  "from its environment, or, for a CodeArtifact repository, gets "
                                  "a token with the step's own AWS role", check=secret_source_problem)


@dataclass(frozen=True)
class Settings:
    """A run's settings, built once (``movierec.training.flowconfig``) and passed whole."""

    data: DataSettings = field(default_factory=DataSettings)
    protocol: str = setting("tfrs", "protocol", "evaluation protocol: tfrs (80/20 random), msr (per-user 75/25), "
                            "temporal (time cutoff), coldstart (10% of the movies held out with all their ratings: "
                            "recommending movies nobody has rated)", choices=tuple(PROTOCOLS))
    seed: int = setting(42, "seed", "seed for the split, initialisation and data order")
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    retrieval_search: RetrievalSearchConfig = field(default_factory=RetrievalSearchConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    train_budget: int = setting(20_000_000, "train-budget", "most training examples each model sees over all its "
                                "epochs (epochs are cut to fit): keeps ML-20M-sized data inside ~20 minutes on 2 "
                                "cores; ML-100K is far below it", minimum=1)
    index: IndexSettings = field(default_factory=IndexSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    promotion: PromotionSettings = field(default_factory=PromotionSettings)
    deploy: DeploySettings = field(default_factory=DeploySettings)

    def epochs_for(self, max_epochs: int, n_examples: int) -> int:
        """Epochs to run over ``n_examples``: at most ``max_epochs``, at least one, within the budget."""
        return max(1, min(max_epochs, self.train_budget // max(1, n_examples)))


@dataclass(frozen=True)
class Setting:
    """One user setting as the configuration file and the command line see it."""

    key: str  # dotted path, e.g. "retrieval.epochs"
    default: str | int | bool
    option: str
    help: str
    minimum: int | None
    choices: tuple[str, ...]
    check_value: Callable[[Any], str | None] | None

    @property
    def attribute(self) -> str:
        """The flow attribute holding the effective value (a Parameter's)."""
        return self.option.replace("-", "_")

    @property
    def file_only(self) -> bool:
        """Set in the configuration file only: no command-line option, no Parameter."""
        return not self.option

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` for this setting, or None."""
        import json

        expected = type(self.default)
        accepted = (int, float) if expected is float else expected  # 0 in a file is a number too
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, accepted):
            names = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}
            return f"must be {names[expected]}, got {json.dumps(value)}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {json.dumps(value)}"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum}, got {value}"
        return self.check_value(value) if self.check_value else None


def _walk(cls: type, prefix: str = "") -> Iterator[Setting]:
    for f in fields(cls):
        key = prefix + f.name
        if "option" in f.metadata:
            m = f.metadata
            yield Setting(key, f.default, option=m["option"], help=m["help"], minimum=m["minimum"],
                          choices=m["choices"], check_value=m["check"])
        elif isinstance(f.default_factory, type) and is_dataclass(f.default_factory):
            yield from _walk(f.default_factory, key + ".")


SETTINGS: tuple[Setting, ...] = tuple(_walk(Settings))
BY_KEY = {s.key: s for s in SETTINGS}


def from_values(values: dict[str, object]) -> Settings:
    """Settings from dotted keys (``{"retrieval.epochs": 3}``); keys left out keep their defaults."""
    return _build(Settings, values, "")


def _build(cls: type, values: dict[str, object], prefix: str) -> Any:
    kwargs = {}
    for f in fields(cls):
        key = prefix + f.name
        if key in values:
            kwargs[f.name] = values[key]
        elif isinstance(f.default_factory, type) and is_dataclass(f.default_factory):
            kwargs[f.name] = _build(f.default_factory, values, key + ".")
    return cls(**kwargs)


def to_values(settings: Settings) -> dict[str, object]:
    """The user settings of ``settings`` by dotted key (the inverse of :func:`from_values`)."""
    out = {}
    for s in SETTINGS:
        node: Any = settings
        for part in s.key.split("."):
            node = getattr(node, part)
        out[s.key] = node
    return out
