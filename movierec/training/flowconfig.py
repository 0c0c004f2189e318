"""The flow's configuration: a Metaflow ``Config`` file, one ``Parameter`` per setting, both checked,
and the typed :class:`~movierec.core.settings.Settings` built from them once per run.

A configuration file (JSON or YAML, ``flows/configs/``) is a Metaflow ``Config``: it is read and
checked by :func:`parse` before any step runs, and versioned with the run. Every setting but the
steps' resources (fixed when a flow is deployed, before Parameters exist) is also a flow
``Parameter`` whose default comes from the file, so ``--config config
flows/configs/lightgcn.json run --tune-samples 2`` takes the file and changes one value. A file may
hold only the settings it changes; the rest keep their defaults (``movierec.core.settings``, the one
place defaults live; ``python -m movierec.training.flowconfig`` prints them all as a file).

The Parameters are not written out in the flow: :class:`configured` (a Metaflow ``FlowMutator``)
adds one per setting, each checked as the command line is parsed, before a run exists (Metaflow
stores and prints parameter values, so a bad value, or a repository URL with a password in it,
must never reach a run), gives each step its ``@resources``, ``@timeout``, ``@secrets`` and (on
Kubernetes or AWS Batch) its image and ``@retry`` from the file, and wraps every step in
:func:`step_frame`: fault injection for tests, a timing line, and inputs a step only read
handed on as stored (not saved again), in one place. An error names the
setting and its option:
``retrieval.negatives (--negatives) must be at least 1, got 0``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from movierec.core.settings import BY_KEY, SETTINGS, RaySettings, Setting, Settings, from_values, to_values
from movierec.training import faults
from movierec.training.cluster import prepare_local_cluster


class ConfigError(ValueError):
    pass


# RecommenderClusterFlow's step that trains the retrieval model on a Ray cluster of ray.nodes containers.
CLUSTER_STEP = "train_on_cluster"
# Steps that start Ray: their containers get ray.num_cpus CPUs, deploy.ray_memory and a /dev/shm.
RAY_STEPS = ("train_retrieval", "tune_ranking", CLUSTER_STEP)
# Steps a lost node or a storage error can fail, retried on Kubernetes/Batch (deploy.retries).
RETRIED_STEPS = ("start", *RAY_STEPS, "publish")
# The compute decorator each scheduler runs every step with, and what Metaflow sets
# METAFLOW_RUNTIME_ENVIRONMENT to in a step's container.
DEPLOY_COMPUTE = {"argo-workflows": "kubernetes", "airflow": "kubernetes", "step-functions": "batch"}
RUNTIME_COMPUTE = {"kubernetes": "kubernetes", "aws-batch": "batch"}
DEPLOY_COMMANDS = tuple(DEPLOY_COMPUTE)
# Datastores whose storage every node of a Ray cluster reaches (``cluster.storage_path`` keeps the
# Ray steps' results there); the local one is a folder of this machine.
SHARED_DATASTORES = ("s3", "gs")
# Settings that size the Ray steps' containers (step_decorators): on Kubernetes/Batch only the file's count.
SIZING = ("ray.num_cpus", "ray.nodes", "retrieval.workers", "retrieval.gpus_per_worker", "tune.trials_per_gpu")
REMOTE_COMPUTE = ("kubernetes", "batch")
# What the code package a remote step runs from holds besides Metaflow's own suffixes (.py): what
# publishing builds the wheel from, setup.cfg, pyproject.toml and README.md (flows/ links them, and
# the movierec package), and the web page (movierec/serving/web/index.html). The flows name them with
# Metaflow's @package_suffixes mutator, which the subclass RecommenderClusterFlow inherits.
PACKAGE_SUFFIXES = (".cfg", ".toml", ".md", ".html")


def _named(key: str) -> str:
    s = BY_KEY[key]
    return f"{key} (configuration file only)" if s.file_only else f"{key} (--{s.option})"


def _combinations(values: dict[str, object], run_time: bool, cluster: bool, datastore: str | None) -> list[str]:
    """What is wrong with settings that are each fine alone (``values``: every setting; at
    ``run_time`` the run's own values, else a configuration file's before the command line is
    read; ``cluster``: for RecommenderClusterFlow, which trains retrieval on ``ray.nodes`` nodes;
    ``datastore``: the run's Metaflow datastore type, where known)."""
    problems = []
    workers, cpus, nodes = values["retrieval.workers"], values["ray.num_cpus"], values["ray.nodes"]
    # Locally train_retrieval shares the machine with tune_ranking; remotely it has a container of its own.
    remote = runs_remotely()
    if cluster:
        if -(-workers // nodes) > cpus:
            problems.append(f"{_named('retrieval.workers')} is {workers} over {_named('ray.nodes')} {nodes}, "
                            f"{-(-workers // nodes)} to a node, but {_named('ray.num_cpus')} is {cpus}: each "
                            "retrieval worker needs a CPU of its node")
        if (run_time and remote or deploys()) and not values["deploy.ray_token_secret"]:
            problems.append(f"{_named('deploy.ray_token_secret')} is required when train_on_cluster runs on "
                            "Kubernetes or AWS Batch: without one token its Ray nodes would accept any process "
                            "that reaches them")
    elif not values["ray.address"]:
        share = cpus if remote else RaySettings(num_cpus=cpus).beside_tuning().num_cpus
        if workers > share:
            # Ray Train would wait for CPUs that never come: each worker needs one of the local instance's.
            gets = "" if remote else f", of which train_retrieval gets {share} (tune_ranking runs beside it)"
            problems.append(f"{_named('retrieval.workers')} is {workers} but {_named('ray.num_cpus')} is {cpus}{gets}: "
                            "each retrieval worker needs a CPU of the step's own Ray instance (or join a larger "
                            "cluster with --ray-address)")
    # A run's --repository-url comes after the file is read: the file alone must have one only for
    # a deployment, which takes its values from the file.
    if (run_time and remote or deploys()) and not values["publish.repository_url"]:
        problems.append(f"{_named('publish.repository_url')} is required when steps run on Kubernetes or AWS "
                        "Batch: the default local index would be written inside publish's container and lost with "
                        "it (set it in the configuration file for a deployment)")
    if remote:
        problems += _image_problems(values["deploy.image"])
    if values["ray.address"] and datastore is not None and datastore not in SHARED_DATASTORES:
        problems.append(f"{_named('ray.address')} is {values['ray.address']}, but the run's datastore is {datastore}: "
                        "the Ray steps keep their results in the datastore, and the cluster's nodes on other machines "
                        "cannot reach a folder of this one (Ray Train refuses it there); run with --datastore s3 (or "
                        "gs), whose storage every node reaches")
    return problems


def _image_problems(image: str) -> list[str]:
    """What is wrong with the image remote steps get (``deploy.image``): there must be one, and an
    image the command line names (``--with kubernetes:image=...``) must be that one."""
    if not image:
        return [f"{_named('deploy.image')} is required when steps run on Kubernetes or AWS Batch: without it "
                "Metaflow runs every step in python:3.11, which has neither torch nor Ray (build and push the "
                "Dockerfile's image, and name it there)"]
    compute = remote_compute()
    named = compute.options.get("image") if compute else None
    if named is not None and named != image:
        return [f"--with {compute.decorator} names the image {named}, but {_named('deploy.image')} is {image}: the "
                "steps run in the file's image; change it there"]
    return []


def check(values: dict[str, object], run_time: bool = False, cluster: bool = False, datastore: str | None = None
          ) -> None:
    """Raise ConfigError naming every bad setting in ``values`` (dotted keys; settings left out
    keep their defaults), alone and in combination (see :func:`_combinations`)."""
    problems = []
    for key, value in values.items():
        setting = BY_KEY.get(key)
        if setting is None:
            problems.append(f"unknown setting {key!r} (known: {', '.join(BY_KEY)})")
        elif (why := setting.problem(value)) is not None:
            problems.append(f"{_named(key)} {why}")
    if not problems:
        problems = _combinations({**{s.key: s.default for s in SETTINGS}, **values}, run_time, cluster, datastore)
    if problems:
        raise ConfigError("invalid flow configuration: " + "; ".join(problems))


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


def defaults() -> dict:
    """Every setting's default, nested as a configuration file holds them."""
    return nest({s.key: s.default for s in SETTINGS})


def parse(text: str, cluster: bool = False) -> dict:
    """The Metaflow ``Config`` parser: the file's settings over the defaults, all checked. Errors
    are raised as MetaflowException, which Metaflow prints as a message rather than a traceback."""
    try:
        flat = _flatten(_read(text))
    except ConfigError as exc:
        from metaflow.exception import MetaflowException

        raise MetaflowException(str(exc)) from None
    _checked(flat, cluster=cluster)
    return nest({**{s.key: s.default for s in SETTINGS}, **flat})


def parse_cluster(text: str) -> dict:
    """:func:`parse` for RecommenderClusterFlow, whose retrieval workers spread over ``ray.nodes`` nodes."""
    return parse(text, cluster=True)


def _parameter(s: Setting):
    """The flow ``Parameter`` for setting ``s``: its default read from the ``config`` Config, its
    value checked while the command line is parsed (a click callback: the Runner API knows only
    Metaflow's own parameter types)."""
    from metaflow import Parameter, config_expr
    from metaflow._vendor import click  # Metaflow parses its command line with its own copy of click

    def checked(ctx: object, param: object, value: object) -> object:
        if value is not None and (why := s.problem(value)) is not None:
            raise click.BadParameter(f"{s.key} (--{s.option}) {why}")
        return value

    return Parameter(s.option, default=config_expr(f"config.{s.key}"), type=type(s.default), help=s.help,
                     callback=checked)


def _checked(values: dict[str, object], run_time: bool = False, cluster: bool = False,
             datastore: str | None = None) -> None:
    """:func:`check`, its error raised as a MetaflowException: Metaflow prints that as a message,
    where any other exception comes with a traceback that buries it."""
    try:
        check(values, run_time, cluster, datastore)
    except ConfigError as exc:
        from metaflow.exception import MetaflowException

        raise MetaflowException(str(exc)) from None


def settings_of(flow: object) -> Settings:
    """The run's settings from the flow's parameters (command line over file) and, for the
    settings of the file only, its ``config``; checked together, and with the run's datastore."""
    values = {s.key: _lookup(flow.config, s.key) if s.file_only else getattr(flow, s.attribute) for s in SETTINGS}
    if runs_remotely():
        # The containers were sized from the file when the flow was deployed or launched; Ray would
        # be told the command line's values: a pod of 2 CPUs told 8, or a GPU worker with no GPU.
        differ = [f"{_named(key)} is {values[key]} but the file says {_lookup(flow.config, key)}"
                  for key in SIZING if values[key] != _lookup(flow.config, key)]
        if differ:
            from metaflow.exception import MetaflowException

            raise MetaflowException("on Kubernetes or AWS Batch the configuration file sizes the steps' containers, "
                                    "so set these there, not on the command line: " + "; ".join(differ))
    datastore = getattr(getattr(flow, "_datastore", None), "TYPE", None)  # a running step's task datastore
    _checked(values, run_time=True, cluster=hasattr(flow, CLUSTER_STEP), datastore=datastore)
    return from_values(values)


def _lookup(tree: object, key: str) -> object:
    """``tree["a"]["b"]`` for key ``a.b``."""
    for part in key.split("."):
        tree = tree[part]
    return tree


@dataclass(frozen=True)
class Compute:
    """Where the steps run remotely: Metaflow's compute decorator (``kubernetes`` or ``batch``)
    and the options the command line gave it (``--with kubernetes:service_account=x``)."""

    decorator: str
    options: dict[str, object] = field(default_factory=dict)


def _decospecs(argv: list[str]) -> list[str]:
    """The decorator specs a command adds to every step: ``--with`` (either form), METAFLOW_DECOSPECS
    and Metaflow's DEFAULT_DECOSPECS (a profile may send every run to Kubernetes)."""
    from metaflow.metaflow_config import DEFAULT_DECOSPECS

    specs = []
    for i, arg in enumerate(argv):
        if arg == "--with" and i + 1 < len(argv):
            specs.append(argv[i + 1])
        elif arg.startswith("--with="):
            specs.append(arg.removeprefix("--with="))
    return [*specs, *os.environ.get("METAFLOW_DECOSPECS", "").split(), *(DEFAULT_DECOSPECS or "").split()]


def remote_compute(argv: list[str] | None = None) -> Compute | None:
    """Where the flow's steps run, None for this machine: Kubernetes or AWS Batch when this
    process is in such a container (Metaflow sets METAFLOW_RUNTIME_ENVIRONMENT there, as its own
    plugins check), or its command sends steps there (``--with kubernetes``, ``--with batch``, or
    the same in METAFLOW_DECOSPECS or DEFAULT_DECOSPECS) or deploys the flow to a scheduler
    (Argo Workflows and Airflow run steps on Kubernetes, Step Functions on Batch)."""
    from metaflow.decorators import StepDecorator

    argv = sys.argv if argv is None else argv
    specs = [spec.partition(":") for spec in _decospecs(argv)]
    runtime = os.environ.get("METAFLOW_RUNTIME_ENVIRONMENT", "local")
    if runtime != "local":
        decorator = RUNTIME_COMPUTE.get(runtime, runtime)
    else:
        decorator = next((name for name, _, _ in specs if name in REMOTE_COMPUTE), None) or next(
            (DEPLOY_COMPUTE[arg] for arg in argv if arg in DEPLOY_COMPUTE), None)
    if decorator is None:
        return None
    options = next((StepDecorator.extract_args_kwargs_from_decorator_spec(body)[1]
                    for name, _, body in specs if name == decorator), {})
    return Compute(decorator, options)


def runs_remotely(argv: list[str] | None = None) -> bool:
    """Whether the flow's steps run on Kubernetes or AWS Batch (:func:`remote_compute`)."""
    return remote_compute(argv) is not None


def launches_run(argv: list[str] | None = None) -> bool:
    """Whether this process starts a run (``run`` or ``resume``), rather than running one of its
    tasks (``step``), or loading the flow for a Runner or a deployment."""
    argv = sys.argv if argv is None else argv
    return "step" not in argv and any(arg in ("run", "resume") for arg in argv)


def deploys(argv: list[str] | None = None) -> bool:
    """Whether this command deploys the flow to a scheduler (Argo Workflows, Step Functions, Airflow)."""
    return any(arg in DEPLOY_COMMANDS for arg in (sys.argv if argv is None else argv))


def step_decorators(step_name: str, config: object, compute: Compute | None, cluster: bool = False
                    ) -> dict[str, dict[str, object]]:
    """Metaflow step decorators (name -> arguments) for ``step_name`` from the ``config`` Config:
    ``resources`` (see ``DeploySettings``), ``timeout``, and where the steps run remotely
    (``compute``) the compute decorator with the command line's options and the file's image,
    ``retry``, and publish's ``secrets`` (its repository credentials, when a source is set: a local
    run has TWINE_* in its own environment or the machine's AWS role, and Metaflow refuses a secret
    that would overwrite a variable the environment already has, as a CI job that exports them); in
    RecommenderClusterFlow (``cluster``) train_on_cluster's nodes share the retrieval GPUs, and
    get the Ray token secret remotely."""
    remote = compute is not None
    res, retrieval_gpus = config["deploy"], config["retrieval"]["workers"] * config["retrieval"]["gpus_per_worker"]
    if step_name in RAY_STEPS:
        gpu = {"train_retrieval": 0 if cluster else retrieval_gpus,
               CLUSTER_STEP: -(-config["retrieval"]["workers"] // config["ray"]["nodes"])
               * config["retrieval"]["gpus_per_worker"],
               "tune_ranking": int(config["tune"]["trials_per_gpu"] > 0)}.get(step_name, 0)
        resources = {"cpu": config["ray"]["num_cpus"], "memory": res["ray_memory"],
                     "shared_memory": res["ray_memory"] // 3, **({"gpu": gpu} if gpu else {})}
    else:
        resources = {"cpu": res["cpu"], "memory": res["memory"]}
    decorators = {"resources": resources, "timeout": {"hours": res["timeout_hours"]}}
    if remote and compute.decorator in REMOTE_COMPUTE:
        # Added before --with attaches its own (then ignored for these steps): so the command line's
        # options are kept here, and the image is the file's, never Metaflow's default python:3.11.
        decorators[compute.decorator] = {**compute.options, "image": res["image"]}
    if remote and step_name in RETRIED_STEPS and res["retries"]:
        decorators["retry"] = {"times": res["retries"], "minutes_between_retries": 1}
    if remote and step_name == CLUSTER_STEP and res["ray_token_secret"]:
        # Ray reads RAY_AUTH_MODE when imported, before @secrets has set the token in the task
        decorators["environment"] = {"vars": {"RAY_AUTH_MODE": "token"}}
        decorators["secrets"] = {"sources": [res["ray_token_secret"]]}
    if remote and step_name == "publish" and res["publish_secret"]:
        decorators["secrets"] = {"sources": [res["publish_secret"]]}
    return decorators


def sources(settings: Settings, config: dict) -> list[dict[str, object]]:
    """Rows for the start card: each setting, its value, and whether the file or the command line set it."""
    from_file = _flatten(config)
    return [{"setting": key, "value": value,
             "from": "config" if BY_KEY[key].file_only or from_file[key] == value else f"--{BY_KEY[key].option}"}
            for key, value in to_values(settings).items()]


def step_frame(step_name: str, flow: object, inputs: object = None) -> Iterator[None]:
    """What every step does around its own code: an injected fault when a test asks for one
    (``movierec.training.faults``), a line saying how long the step took, and the artifacts the step only
    read handed on as stored (:func:`unchanged_inputs`), not saved again."""
    faults.maybe_fail(step_name)
    start = time.perf_counter()
    before = set(vars(flow))
    with digests_of_loads(flow._datastore) as loaded:  # the input's (in a join, the task's own): no public accessor
        yield
    for name in unchanged_inputs(flow, set(vars(flow)) - before, loaded):
        delattr(flow, name)  # Metaflow then passes the input's stored copy on to this task
    print(f"[{step_name}] finished in {time.perf_counter() - start:.1f} s", flush=True)


class _HashSink:
    """A file for :func:`pickle.dump` that keeps only the sha256 of what is written: a value's
    digest without its pickled bytes in memory (several hundred MB for ML-20M's split)."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()

    def write(self, data: bytes | pickle.PickleBuffer) -> int:
        # protocol 5 hands large buffers (numpy arrays') over as PickleBuffer, which has no len()
        self.sha.update(data)
        return memoryview(data).nbytes


def pickle_digest(value: object) -> bytes:
    """sha256 of ``value``'s pickle, streamed (:class:`_HashSink`)."""
    sink = _HashSink()
    pickle.dump(value, sink, protocol=pickle.HIGHEST_PROTOCOL)
    return sink.sha.digest()


@contextlib.contextmanager
def digests_of_loads(store: object) -> Iterator[dict[str, bytes]]:
    """While the step runs, the :func:`pickle_digest` of each artifact ``store`` loads (name ->
    digest), taken as it is loaded, before the step can change it. Metaflow loads an input the
    step reads through ``store.load_artifacts`` (``FlowSpec.__getattr__`` -> ``store[name]``) and
    offers no hook there, so this instance's method is wrapped for the step's length: at its end
    the value needs no second load to be compared with what is stored."""
    digests: dict[str, bytes] = {}
    if store is None:  # the start step has no input
        yield digests
        return
    load = store.load_artifacts

    def load_and_digest(names):
        for name, value in load(names):
            digests[name] = pickle_digest(value)
            yield name, value

    store.load_artifacts = load_and_digest
    try:
        yield digests
    finally:
        del store.load_artifacts  # the class's method again


def unchanged_inputs(flow: object, touched: set[str], loaded: dict[str, bytes]) -> list[str]:
    """Which of ``touched`` (attributes that appeared on ``flow`` while the step ran: loaded or
    assigned) are input artifacts the step only read. Metaflow keeps an input it loads on the
    flow object and saves every artifact found there again at the end of the step, under the
    hash of its new pickle, and a loaded value does not pickle to the bytes it was loaded from
    (unpickling interns attribute names, so shared strings come apart; so Metaflow's stored sha1
    cannot tell): each artifact a later step read was stored a second time, the candidate sources'
    20 MB among them. A value counts as unchanged when it pickles to the same digest as when it
    was loaded (``loaded``, :func:`digests_of_loads`); one the step changed, in place or by
    assigning it, differs and is saved as before, as is one loaded some other way."""
    return [name for name in sorted(touched)
            if not name.startswith("_") and name in loaded and pickle_digest(vars(flow)[name]) == loaded[name]]


@functools.cache
def _mutator() -> type:
    from metaflow import FlowMutator, user_step_decorator

    frame = user_step_decorator(step_frame)

    class configured(FlowMutator):  # noqa: N801 (used as a lower-case class decorator, as Metaflow's own)
        """Adds a Parameter per setting (but those of the file only), the deployment's schedule, each
        step's image, resources, timeout, retries and secrets (:func:`step_decorators`), and wraps every step in
        :func:`step_frame`; for a local run of RecommenderClusterFlow it readies this machine for
        the run's Ray nodes (``cluster.prepare_local_cluster``)."""

        def pre_mutate(self, mutable_flow) -> None:
            for s in SETTINGS:
                if not s.file_only:
                    mutable_flow.add_parameter(s.attribute, _parameter(s))
            config, compute = dict(mutable_flow.configs)["config"], remote_compute()
            cluster = any(name == CLUSTER_STEP for name, _ in mutable_flow.steps)
            if cluster and compute is None and launches_run():
                prepare_local_cluster()
            if config["deploy"]["schedule"]:
                mutable_flow.add_decorator("schedule", deco_kwargs={config["deploy"]["schedule"]: True})
            for name, step in mutable_flow.steps:
                step.add_decorator(frame)
                for decorator, arguments in step_decorators(name, config, compute, cluster).items():
                    step.add_decorator(decorator, deco_kwargs=arguments)

    return configured


def __getattr__(name: str):
    # Built on first use: importing Metaflow costs the processes that only read settings.
    if name == "configured":
        return _mutator()
    raise AttributeError(f"module 'movierec.training.flowconfig' has no attribute {name!r}")


def main() -> int:
    """``python -m movierec.training.flowconfig``: every setting's default, as a configuration file."""
    json.dump(defaults(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
