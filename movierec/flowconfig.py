"""The flow's settings: one table of every setting, read from a configuration file and overridable
one by one on the command line.

A configuration file (JSON or YAML, ``flows/configs/``) is a Metaflow ``Config``: it is read and
checked by :func:`parse` before any step runs, and versioned with the run. Every setting is also a
flow ``Parameter`` whose default comes from the file (:func:`parameter`), so
``--config config flows/configs/lightgcn.json run --tune-samples 2`` takes the file and changes
one value. A file may hold only the settings it changes; the rest keep their defaults here.

Every value, from the file or the command line, passes the same checks (:func:`check`), and an
error names the setting (and its command-line option): ``retrieval.epochs (--retrieval-epochs)
must be at least 1, got 0``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from movierec.config import RETRIEVAL_MODELS, RetrievalConfig
from movierec.protocols import PROTOCOLS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "flows" / "configs"
DEFAULT_FILE = CONFIG_DIR / "default.json"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Setting:
    key: str  # dotted path in the configuration file
    default: str | int | bool
    option: str  # the flow's command-line option (without --)
    help: str
    minimum: int | None = None
    choices: tuple[str, ...] = ()

    @property
    def attribute(self) -> str:
        """The flow attribute holding the effective value."""
        return self.option.replace("-", "_")

    def check(self, value: object) -> str | None:
        """What is wrong with ``value`` for this setting, or None."""
        expected = type(self.default)
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            names = {str: "a string", int: "an integer", bool: "true or false"}
            return f"must be {names[expected]}, got {json.dumps(value)}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {json.dumps(value)}"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum}, got {value}"
        return None


SETTINGS: tuple[Setting, ...] = (
    Setting("data.dir", "", "data-dir", "MovieLens folder (ratings.csv+movies.csv, ml-1m .dat, or recbole ml-100k "
            "files); empty: ML-100K, downloaded once into data/ml-100k"),
    Setting("data.synthetic_ratings", 0, "synthetic-ratings", "use N synthetic ML-20M-shaped ratings (0: off)",
            minimum=0),
    Setting("data.max_ratings", 0, "max-ratings", "keep only the first N ratings by time (0: all)", minimum=0),
    Setting("protocol", "tfrs", "protocol", "evaluation protocol: tfrs (80/20 random), msr (per-user 75/25), "
            "temporal (time cutoff)", choices=tuple(PROTOCOLS)),
    Setting("seed", 42, "seed", "seed for the split, initialisation and data order"),
    Setting("retrieval.model", "two_tower", "retrieval-model", "retrieval model: two_tower (id + feature towers) "
            "or lightgcn (graph propagation over the user-movie interactions)", choices=RETRIEVAL_MODELS),
    Setting("retrieval.epochs", RetrievalConfig.epochs, "retrieval-epochs",
            "most retrieval epochs (stops early when validation quality stalls)", minimum=1),
    Setting("retrieval.dim", RetrievalConfig.dim, "embedding-dim", "retrieval embedding size", minimum=1),
    Setting("retrieval.workers", RetrievalConfig.workers, "retrieval-workers", "Ray Train data-parallel workers",
            minimum=1),
    Setting("retrieval.history", RetrievalConfig.history, "history",
            "both models also see each user's 50 latest rated movies (SVD++-style): about +0.002 NDCG@10 on "
            "ML-100K for half the training speed"),
    Setting("tune.samples", 6, "tune-samples", "Ray Tune trials for the rating model", minimum=1),
    Setting("tune.epochs", 8, "tune-epochs", "most epochs a Tune trial may train (ASHA stops early)", minimum=1),
    Setting("tune.trial_ratings", 1_000_000, "tune-trial-ratings",
            "Tune trials train on a sample of at most this many ratings; on larger data the best settings are "
            "then refitted once on all of them", minimum=1),
    Setting("train_budget", RetrievalConfig.max_examples, "train-budget",
            "most training examples each model sees over all its epochs (epochs are cut to fit): keeps "
            "ML-20M-sized data inside ~20 minutes on 2 cores; ML-100K is far below it", minimum=1),
    Setting("index.n_trees", 50, "n-trees", "Annoy trees (more: better recall, bigger index)", minimum=1),
    Setting("ray.address", "", "ray-address", "join this Ray cluster instead of starting one (empty: start one)"),
    Setting("ray.num_cpus", 2, "num-cpus", "CPUs for the local Ray instance", minimum=1),
    Setting("publish.user_data", True, "publish-user-data",
            "put every user's rated movies, vectors and model rows into the published wheel; false: it answers "
            "history-based requests only (for data whose users must not travel with the model)"),
)
BY_KEY = {s.key: s for s in SETTINGS}


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested settings as dotted keys; a mapping is descended into only where settings live below
    it, so anything else stays one value for :func:`check` to report."""
    flat = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and any(s.key.startswith(key + ".") for s in SETTINGS):
            flat.update(_flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _named(key: str) -> str:
    return f"{key} (--{BY_KEY[key].option})"


def _combinations(values: dict[str, object]) -> list[str]:
    """What is wrong with settings that are each fine alone (``values``: every setting)."""
    problems = []
    workers, cpus = values["retrieval.workers"], values["ray.num_cpus"]
    if not values["ray.address"] and workers > cpus:
        # Ray Train would wait for CPUs that never come: each worker needs one of the local instance's.
        problems.append(f"{_named('retrieval.workers')} is {workers} but {_named('ray.num_cpus')} is {cpus}: each "
                        "retrieval worker needs a CPU of the local Ray instance (or join a larger cluster with "
                        "--ray-address)")
    return problems


def check(values: dict[str, object]) -> None:
    """Raise ConfigError naming every bad setting in ``values`` (dotted keys; settings left out
    keep their defaults), alone and in combination."""
    problems = []
    for key, value in values.items():
        setting = BY_KEY.get(key)
        if setting is None:
            problems.append(f"unknown setting {key!r} (known: {', '.join(BY_KEY)})")
        elif (why := setting.check(value)) is not None:
            problems.append(f"{_named(key)} {why}")
    if not problems:
        problems = _combinations({**{s.key: s.default for s in SETTINGS}, **values})
    if problems:
        raise ConfigError("invalid flow configuration: " + "; ".join(problems))


def _read(text: str) -> dict:
    """JSON, or YAML when the text is not JSON; errors say where."""
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{"):
            raise ConfigError(f"configuration is not valid JSON: {exc.msg} at line {exc.lineno}, "
                              f"column {exc.colno}") from None
        import yaml

        try:
            tree = yaml.safe_load(text)
        except yaml.YAMLError as yexc:
            raise ConfigError(f"configuration is neither JSON nor valid YAML: {yexc}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"configuration must be a mapping of settings, got {type(tree).__name__}")
    return tree


def nest(flat: dict[str, object]) -> dict:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def parse(text: str) -> dict:
    """The Metaflow ``Config`` parser: the file's settings over the defaults, all checked. Errors
    are raised as MetaflowException, which Metaflow prints as a message rather than a traceback."""
    try:
        flat = _flatten(_read(text))
        check(flat)
    except ConfigError as exc:
        from metaflow.exception import MetaflowException

        raise MetaflowException(str(exc)) from None
    return nest({**{s.key: s.default for s in SETTINGS}, **flat})


def parameter(key: str):
    """The flow ``Parameter`` for setting ``key``, its default read from the ``config`` Config."""
    from metaflow import Parameter, config_expr

    s = BY_KEY[key]
    return Parameter(s.option, default=config_expr(f"config.{key}"), type=type(s.default), help=s.help)


def repository_url_parameter():
    """The ``--repository-url`` Parameter, checked as the command line is parsed: Metaflow stores
    every parameter value with the run (and prints it), so a URL with credentials in it must be
    refused before a run exists, not in a step. (A click callback rather than a click type: the
    Runner API only knows Metaflow's own parameter types.)"""
    from metaflow import Parameter
    from metaflow._vendor import click  # Metaflow parses its command line with its own copy of click

    from movierec.packaging import PublishError, check_repository_url

    def check_url(ctx: object, param: object, value: str | None) -> str | None:
        try:
            return check_repository_url(value) if value else value
        except PublishError as exc:
            raise click.BadParameter(str(exc)) from None

    return Parameter("repository-url", default="", type=str, callback=check_url,
                     help="package index to upload the wheel to with twine: https (http on loopback only), "
                          "credentials in TWINE_USERNAME/TWINE_PASSWORD, never in the URL; default: the local PEP 503 "
                          "index in --index-dir")


def effective(flow: object) -> dict[str, object]:
    """Every setting's value in a running flow (command line over file), by dotted key."""
    return {s.key: getattr(flow, s.attribute) for s in SETTINGS}


def sources(values: dict[str, object], config: dict) -> list[dict[str, object]]:
    """Rows for the start card: each setting, its value, and whether the file or the command line set it."""
    from_file = _flatten(config)
    return [{"setting": key, "value": value,
             "from": "config" if from_file[key] == value else f"--{BY_KEY[key].option}"}
            for key, value in values.items()]
