"""The flow's configuration file: parsed and checked before any step, overridable per setting."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FLOW, ML100K
from metaflow.exception import MetaflowException

from movierec.core.settings import BY_KEY, SECRETS_BACKENDS, SETTINGS, RetrievalConfig, Settings, from_values, to_values
from movierec.training import flowconfig

CONFIGS = Path(FLOW).parent / "configs"
IMAGE = "registry.example/movierec:1.0"
KUBERNETES = flowconfig.Compute("kubernetes")


def test_shipped_files_parse_and_the_defaults_are_the_dataclasses():
    defaults = flowconfig.defaults()
    assert flowconfig.parse("{}") == defaults == flowconfig.parse(json.dumps(defaults))
    assert defaults["retrieval"]["epochs"] == RetrievalConfig.epochs == 0 and defaults["seed"] == Settings.seed
    printed = subprocess.run([sys.executable, "-m", "movierec.training.flowconfig"], capture_output=True, text=True,
                             check=True)
    assert json.loads(printed.stdout) == defaults
    assert to_values(from_values({})) == {s.key: s.default for s in SETTINGS}
    lightgcn = flowconfig.parse((CONFIGS / "lightgcn.json").read_text())
    assert lightgcn["retrieval"]["model"] == "lightgcn" and lightgcn["retrieval"]["epochs"] == 40
    assert lightgcn["retrieval"]["dim"] == 0 and lightgcn["tune"]["samples"] == 6  # the rest: defaults
    yaml_file = flowconfig.parse((CONFIGS / "ml20m.yaml").read_text())
    assert yaml_file["data"]["dir"] == "~/ml-20m" and yaml_file["protocol"] == "temporal"
    production = flowconfig.parse((CONFIGS / "production.yaml").read_text())
    assert production["deploy"]["schedule"] == "weekly" and production["publish"]["repository_url"]
    assert production["deploy"]["image"] and production["deploy"]["publish_secret"] == ""  # CodeArtifact: the role


@pytest.mark.parametrize("text, message", [
    ('{"retrieval": {"modle": "lightgcn"}}', "unknown setting 'retrieval.modle'"),
    ('{"tune": 5}', r"unknown setting 'tune' \(known:"),
    ('{"retrieval": {"epochs": -1}}', r"retrieval.epochs \(--retrieval-epochs\) must be at least 0, got -1"),
    ('{"retrieval": {"negatives": 0}}', r"retrieval.negatives \(--negatives\) must be at least 1, got 0"),
    ('{"retrieval": {"user_tower": "ids"}}', 'retrieval.user_tower .* must be one of features, ratings, got "ids"'),
    ('{"retrieval": {"epochs": "ten"}}', 'retrieval.epochs .* must be an integer, got "ten"'),
    ('{"retrieval": {"history": 1}}', "retrieval.history .* must be true or false, got 1"),
    ('{"seed": true}', "seed .* must be an integer, got true"),
    ('{"protocol": "loo"}', 'protocol .* must be one of tfrs, msr, temporal, coldstart, got "loo"'),
    ('{"retrieval": {"gpus_per_worker": 2}}', r"retrieval.gpus_per_worker \(--gpus-per-worker\) must be 0 or 1"),
    ('{"seed": 1,\n "protocol": }', "not valid JSON: Expecting value at line 2, column 14"),
    ("protocol: [msr", "neither JSON nor valid YAML"),
    ("- a list", "must be a mapping of settings"),
])
def test_bad_configuration_names_the_setting(text, message):
    with pytest.raises(MetaflowException, match=message):
        flowconfig.parse(text)


def test_every_problem_is_reported_at_once():
    with pytest.raises(flowconfig.ConfigError) as err:
        flowconfig.check({"tune.samples": 0, "index.n_trees": -1})
    assert "tune.samples (--tune-samples)" in str(err.value) and "index.n_trees (--n-trees)" in str(err.value)


def test_sources_tell_file_from_command_line():
    config = flowconfig.parse('{"tune": {"samples": 3}}')
    settings = from_values({"tune.samples": 3, "tune.epochs": 2, "protocol": "tfrs"})
    rows = {r["setting"]: r["from"] for r in flowconfig.sources(settings, config)}
    assert (rows["tune.samples"], rows["tune.epochs"], rows["protocol"]) == ("config", "--tune-epochs", "config")
    assert set(rows) == set(BY_KEY)


def test_invalid_file_stops_the_flow_before_any_step(tmp_path, metaflow_root):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"retrieval": {"model": "graphsage"}}))
    proc = subprocess.run([sys.executable, FLOW, "--no-pylint", "--config", "config", str(bad), "run"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert 'retrieval.model (--retrieval-model) must be one of two_tower, lightgcn, got "graphsage"' in proc.stderr
    assert "Traceback" not in proc.stderr and "Task is starting" not in proc.stdout + proc.stderr


@pytest.mark.integration  # a whole flow run
def test_lightgcn_config_trains_evaluates_and_publishes(metaflow_root):
    """The shipped LightGCN file with one value overridden on the command line, on ML-100K's first 20,000
    ratings: what the file sets reaches training, evaluation and the published bundle."""
    if not (ML100K / "ml-100k.inter").exists():
        pytest.skip("ML-100K not fetched: run `make data`")
    from metaflow import Runner, namespace

    from movierec.serving.bundle import read_bundle

    namespace(None)
    with Runner(FLOW, show_output=False, pylint=False, cwd=metaflow_root,
                config=[("config", str(CONFIGS / "lightgcn.json"))]).run(
            retrieval_epochs=2, tune_samples=2, tune_epochs=1, n_trees=10, max_ratings=20_000,
            index_dir=str(Path(metaflow_root) / "pypi-lightgcn")) as running:
        output = running.stdout + running.stderr
        assert running.status == "successful", output[-3000:]
        run = running.run
    # A successful run prints no traceback: a user reads one as a failure (Ray's autoscaling
    # requests timing out on a busy machine printed one in train_retrieval).
    assert "Traceback" not in output
    settings = {r["setting"]: r for r in flowconfig.sources(run["start"].task.data.settings,
                                                            run["start"].task.data.config)}
    assert settings["retrieval.model"] == {"setting": "retrieval.model", "value": "lightgcn", "from": "config"}
    assert settings["retrieval.epochs"]["from"] == "--retrieval-epochs"
    assert settings["protocol"]["value"] == "msr"
    rows = {r["model"] for r in run["evaluate"].task.data.metrics}
    assert "LightGCN retrieval only" in rows
    meta = read_bundle(run["publish"].task.data.bundle)[0]
    assert meta["retrieval"]["model"] == "lightgcn"
    assert meta["exports"]["files"] == ["rating.npz", "ranking.onnx", "user_tower.onnx"]


@pytest.mark.integration  # starts the flow
def test_bad_command_line_value_is_refused_before_the_run_naming_the_option(tmp_path):
    proc = subprocess.run([sys.executable, FLOW, "--no-pylint", "run", "--tune-samples", "0"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert "tune.samples (--tune-samples) must be at least 1, got 0" in proc.stdout + proc.stderr
    assert "Workflow starting" not in proc.stdout + proc.stderr


@pytest.mark.integration  # starts the flow
def test_impossible_combination_on_the_command_line_fails_in_start(tmp_path):
    proc = subprocess.run([sys.executable, FLOW, "--no-pylint", "run", "--retrieval-workers", "3"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    message = "retrieval.workers (--retrieval-workers) is 3 but ray.num_cpus (--num-cpus) is 2"
    assert message in proc.stdout + proc.stderr


def test_more_workers_than_cpus_is_refused_naming_both_settings():
    """It passed the check, and Ray Train then waited for CPUs that never came."""
    with pytest.raises(MetaflowException, match=r"retrieval.workers \(--retrieval-workers\) is 3 but ray.num_cpus "
                                                r"\(--num-cpus\) is 2"):
        flowconfig.parse('{"retrieval": {"workers": 3}}')
    flowconfig.parse('{"retrieval": {"workers": 3}, "ray": {"address": "10.0.0.5:6379"}}')  # a cluster decides
    with pytest.raises(flowconfig.ConfigError, match="is 4 but ray.num_cpus"):
        flowconfig.check({s.key: s.default for s in flowconfig.SETTINGS} | {"retrieval.workers": 4})
    # train_retrieval takes half the machine beside tune_ranking: 2 workers need 4 CPUs (or 3: the odd one is its)
    defaults = {s.key: s.default for s in flowconfig.SETTINGS}
    with pytest.raises(flowconfig.ConfigError, match=r"is 2 but ray.num_cpus \(--num-cpus\) is 2, of which "
                                                     r"train_retrieval gets 1 \(tune_ranking runs beside it\)"):
        flowconfig.check(defaults | {"retrieval.workers": 2})
    flowconfig.check(defaults | {"retrieval.workers": 2, "ray.num_cpus": 3})


def test_the_readme_settings_table_lists_every_setting_with_its_default():
    """The table a user reads is the one place besides the dataclass field that a new setting touches."""
    readme = (Path(FLOW).parent.parent / "README.md").read_text()
    for s in SETTINGS:
        option = "(file only)" if s.file_only else f"`--{s.option}`"
        default = json.dumps(s.default).replace("|", "\\|")  # a pipe inside a table cell is escaped
        assert f"| `{s.key}` | {option} | `{default}` |" in readme, s.key


@pytest.mark.parametrize(("argv", "environment", "remote"), [
    (["flow.py", "run"], {}, False),
    (["flow.py", "run", "--with", "kubernetes:cpu=8"], {}, True),
    (["flow.py", "run", "--with=batch"], {}, True),
    (["flow.py", "--with", "card", "run"], {}, False),
    (["flow.py", "argo-workflows", "create"], {}, True),
    (["flow.py", "step-functions", "create", "--only-json"], {}, True),
    (["flow.py", "run"], {"METAFLOW_DECOSPECS": "kubernetes"}, True),
    (["flow.py", "step", "start"], {"METAFLOW_RUNTIME_ENVIRONMENT": "kubernetes"}, True),
    (["flow.py", "step", "start"], {"METAFLOW_RUNTIME_ENVIRONMENT": "local"}, False),
])
def test_a_flow_knows_when_its_steps_run_remotely(monkeypatch, argv, environment, remote):
    for name in ("METAFLOW_DECOSPECS", "METAFLOW_RUNTIME_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert flowconfig.runs_remotely(argv) is remote


def test_steps_ask_for_the_resources_of_the_configuration_and_retry_only_remotely():
    config = flowconfig.nest({**{s.key: s.default for s in SETTINGS}, "ray.num_cpus": 6, "deploy.cpu": 3,
                              "deploy.memory": 2048, "deploy.ray_memory": 9000, "deploy.retries": 4,
                              "retrieval.workers": 3, "retrieval.gpus_per_worker": 1})
    local = flowconfig.step_decorators("train_retrieval", config, None)
    assert local == {"resources": {"cpu": 6, "memory": 9000, "shared_memory": 3000, "gpu": 3},
                     "timeout": {"hours": 24}}
    assert flowconfig.step_decorators("train_retrieval", config, KUBERNETES)["retry"] == {
        "times": 4, "minutes_between_retries": 1}
    assert flowconfig.step_decorators("tune_ranking", config, KUBERNETES)["resources"] == {
        "cpu": 6, "memory": 9000, "shared_memory": 3000}  # trials on CPU: no GPU
    assert flowconfig.step_decorators("evaluate", config, KUBERNETES) == {
        "resources": {"cpu": 3, "memory": 2048}, "timeout": {"hours": 24},
        "kubernetes": {"image": ""}}  # nothing there a retry would fix (an empty image: refused by check)


def test_remote_steps_run_in_the_files_image_with_the_command_lines_options_and_publish_gets_its_secret():
    """Without `:image=` every step compiled to Metaflow's python:3.11 (no torch, no Ray): the
    image is the file's deploy.image, added with the options `--with kubernetes:...` gave (which
    Metaflow then ignores for steps that have the decorator); the publish step gets its
    repository credentials from the configured @secrets source, on Kubernetes and on Batch."""
    config = flowconfig.nest({**{s.key: s.default for s in SETTINGS}, "deploy.image": IMAGE,
                              "deploy.publish_secret": "aws-secrets-manager.movierec-pypi"})
    compute = flowconfig.Compute("kubernetes", {"service_account": "movierec", "namespace": "ml"})
    assert flowconfig.step_decorators("publish", config, compute) == {
        "resources": {"cpu": 2, "memory": 8192}, "timeout": {"hours": 24},
        "kubernetes": {"service_account": "movierec", "namespace": "ml", "image": IMAGE},
        "retry": {"times": 2, "minutes_between_retries": 1},
        "secrets": {"sources": ["aws-secrets-manager.movierec-pypi"]}}
    on_batch = flowconfig.step_decorators("publish", config, flowconfig.Compute("batch"))
    assert on_batch["batch"] == {"image": IMAGE} and on_batch["secrets"] == {
        "sources": ["aws-secrets-manager.movierec-pypi"]}
    assert "secrets" not in flowconfig.step_decorators("evaluate", config, compute)


@pytest.mark.parametrize(("argv", "environment", "compute"), [
    (["flow.py", "run"], {}, None),
    (["flow.py", "--with", "kubernetes:service_account=movierec,image=reg.example/m:2", "run"], {},
     flowconfig.Compute("kubernetes", {"service_account": "movierec", "image": "reg.example/m:2"})),
    (["flow.py", "run", "--with=batch:queue=gpu"], {}, flowconfig.Compute("batch", {"queue": "gpu"})),
    (["flow.py", "argo-workflows", "create"], {}, flowconfig.Compute("kubernetes")),
    (["flow.py", "airflow", "create", "dag.py"], {}, flowconfig.Compute("kubernetes")),
    (["flow.py", "step-functions", "create"], {}, flowconfig.Compute("batch")),
    (["flow.py", "run"], {"METAFLOW_DECOSPECS": "kubernetes:namespace=ml"},
     flowconfig.Compute("kubernetes", {"namespace": "ml"})),
    (["flow.py", "--with", "kubernetes:cpu=2.0,image=reg.example/m:2", "step", "publish"],
     {"METAFLOW_RUNTIME_ENVIRONMENT": "kubernetes"}, flowconfig.Compute("kubernetes", {"cpu": 2.0,
                                                                                       "image": "reg.example/m:2"})),
    (["flow.py", "step", "publish"], {"METAFLOW_RUNTIME_ENVIRONMENT": "aws-batch"}, flowconfig.Compute("batch")),
])
def test_where_the_steps_run_and_with_which_options(monkeypatch, argv, environment, compute):
    for name in ("METAFLOW_DECOSPECS", "METAFLOW_RUNTIME_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert flowconfig.remote_compute(argv) == compute


def test_remote_steps_need_the_image_in_the_file_and_the_command_line_may_not_name_another(monkeypatch):
    values = {s.key: s.default for s in SETTINGS} | {"publish.repository_url": "https://pypi.example/movierec/"}
    monkeypatch.setattr(flowconfig.sys, "argv", ["flow.py", "run", "--with", "kubernetes"])
    with pytest.raises(flowconfig.ConfigError, match=r"deploy.image \(configuration file only\) is required when "
                                                     "steps run on Kubernetes or AWS Batch: without it Metaflow runs "
                                                     "every step in python:3.11, which has neither torch nor Ray"):
        flowconfig.check(values)
    flowconfig.check(values | {"deploy.image": IMAGE})
    monkeypatch.setattr(flowconfig.sys, "argv", ["flow.py", "run", "--with", f"kubernetes:image={IMAGE}"])
    flowconfig.check(values | {"deploy.image": IMAGE})  # the same image, named twice
    monkeypatch.setattr(flowconfig.sys, "argv", ["flow.py", "run", "--with", "kubernetes:image=python:3.11"])
    with pytest.raises(flowconfig.ConfigError, match=r"--with kubernetes names the image python:3.11, but "
                                                     r"deploy.image \(configuration file only\) is "
                                                     r"registry.example/movierec:1.0: the steps run in the file's"):
        flowconfig.check(values | {"deploy.image": IMAGE})
    monkeypatch.setattr(flowconfig.sys, "argv", ["flow.py", "run"])
    flowconfig.check(values)  # locally no image is needed


@pytest.mark.parametrize("key", ["deploy.ray_token_secret", "deploy.publish_secret"])
def test_secret_sources_must_name_their_backend(key):
    """A bare secret id compiled, and every pod then failed at @secrets: Metaflow's default backend
    type is not set there."""
    section, name = key.split(".")
    with pytest.raises(MetaflowException, match=rf"{key} \(configuration file only\) must name its backend as "
                                                r"<backend>.<secret id> \(backend one of aws-secrets-manager, "
                                                r"gcp-secret-manager, az-key-vault; e.g. "
                                                r"aws-secrets-manager.movierec-ray\), got 'movierec-ray'"):
        flowconfig.parse(json.dumps({section: {name: "movierec-ray"}}))
    for bad in ("vault.movierec-ray", "aws-secrets-manager.", ".movierec-ray"):
        with pytest.raises(MetaflowException, match="must name its backend"):
            flowconfig.parse(json.dumps({section: {name: bad}}))
    parsed = flowconfig.parse(json.dumps({section: {name: "aws-secrets-manager.movierec-ray"}}))
    assert parsed[section][name] == "aws-secrets-manager.movierec-ray"


def test_the_secret_backends_are_metaflows():
    from metaflow.plugins import SECRETS_PROVIDERS_DESC

    assert set(SECRETS_BACKENDS) == {name for name, _ in SECRETS_PROVIDERS_DESC} - {"inline"}


@pytest.mark.integration  # starts the flow
def test_joining_a_ray_cluster_needs_a_datastore_its_nodes_reach(tmp_path):
    """`--ray-address` with the local datastore gave Ray a folder of this machine for its results,
    which a multi-machine cluster refuses mid-training: the run now stops in start."""
    values = {s.key: s.default for s in SETTINGS} | {"ray.address": "10.0.0.5:6379"}
    flowconfig.check(values, run_time=True, datastore="s3")
    proc = subprocess.run([sys.executable, FLOW, "--no-pylint", "run", "--ray-address", "10.0.0.5:6379"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert ("ray.address (--ray-address) is 10.0.0.5:6379, but the run's datastore is local: the Ray steps keep "
            "their results in the datastore, and the cluster's nodes on other machines cannot reach a folder of "
            "this one (Ray Train refuses it there); run with --datastore s3 (or gs)") in proc.stdout + proc.stderr
    assert "[split]" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(("argv", "launches"), [
    (["flow.py", "--no-pylint", "run", "--ray-nodes", "2"], True),
    (["flow.py", "resume"], True),
    (["flow.py", "--quiet", "step", "train_on_cluster", "--run-id", "1"], False),
    (["pytest", "tests"], False),  # a Runner loads the flow in the calling process too
    (["flow.py", "argo-workflows", "create"], False),
])
def test_only_the_process_that_starts_a_run_readies_the_local_cluster(argv, launches):
    assert flowconfig.launches_run(argv) is launches


def test_the_cluster_flow_spreads_workers_over_its_nodes_and_needs_a_shared_token_remotely(monkeypatch):
    """RecommenderClusterFlow's workers share ray.nodes x ray.num_cpus CPUs (not half of one
    machine's); on Kubernetes/Batch its nodes can only form a cluster with one token, from a secret."""
    values = {s.key: s.default for s in SETTINGS} | {"retrieval.workers": 4, "ray.num_cpus": 2, "ray.nodes": 2,
                                                     "publish.repository_url": "https://pypi.example/movierec/",
                                                     "deploy.image": IMAGE}
    monkeypatch.delenv("METAFLOW_DECOSPECS", raising=False)
    monkeypatch.setenv("METAFLOW_RUNTIME_ENVIRONMENT", "local")
    flowconfig.check(values, cluster=True)
    with pytest.raises(flowconfig.ConfigError, match="train_retrieval gets 1"):
        flowconfig.check(values)  # RecommenderFlow: one machine
    with pytest.raises(flowconfig.ConfigError, match=r"retrieval.workers \(--retrieval-workers\) is 5 over ray.nodes "
                                                     r"\(--ray-nodes\) 2, 3 to a node, but ray.num_cpus \(--num-cpus\) "
                                                     "is 2"):
        flowconfig.check(values | {"retrieval.workers": 5}, cluster=True)
    monkeypatch.setenv("METAFLOW_RUNTIME_ENVIRONMENT", "kubernetes")
    with pytest.raises(flowconfig.ConfigError, match=r"deploy.ray_token_secret \(configuration file only\) is "
                                                     "required when train_on_cluster runs on Kubernetes"):
        flowconfig.check(values, run_time=True, cluster=True)
    flowconfig.check(values | {"deploy.ray_token_secret": "aws-secrets-manager.movierec-ray"}, run_time=True,
                     cluster=True)


def test_cluster_nodes_share_the_gpus_and_get_the_token_secret_remotely():
    config = flowconfig.nest({**{s.key: s.default for s in SETTINGS}, "ray.nodes": 2, "retrieval.workers": 3,
                              "retrieval.gpus_per_worker": 1,
                              "deploy.ray_token_secret": "aws-secrets-manager.movierec-ray"})
    remote = flowconfig.step_decorators(flowconfig.CLUSTER_STEP, config, KUBERNETES, cluster=True)
    assert remote["resources"]["gpu"] == 2  # 3 workers of 1 GPU on 2 nodes: 2 to a node
    two_each = flowconfig.nest({**flowconfig._flatten(config), "retrieval.workers": 1, "retrieval.gpus_per_worker": 2})
    assert flowconfig.step_decorators(flowconfig.CLUSTER_STEP, two_each, KUBERNETES, True)["resources"]["gpu"] == 2
    # train_retrieval only fits the candidate sources there
    assert "gpu" not in flowconfig.step_decorators("train_retrieval", config, KUBERNETES, cluster=True)["resources"]
    assert remote["secrets"] == {"sources": ["aws-secrets-manager.movierec-ray"]}
    assert remote["environment"] == {"vars": {"RAY_AUTH_MODE": "token"}}
    local = flowconfig.step_decorators(flowconfig.CLUSTER_STEP, config, None, cluster=True)
    assert "secrets" not in local and "retry" not in local  # locally the run makes a token (prepare_local_cluster)


def test_remote_retrieval_workers_may_use_every_cpu_of_their_container(monkeypatch):
    """Locally train_retrieval gets half of --num-cpus beside tune_ranking; in a container of its
    own it gets them all, so two workers on two CPUs are fine there."""
    values = {s.key: s.default for s in SETTINGS} | {"retrieval.workers": 2, "ray.num_cpus": 2,
                                                     "publish.repository_url": "https://pypi.example/movierec/",
                                                     "deploy.image": IMAGE}
    monkeypatch.delenv("METAFLOW_DECOSPECS", raising=False)
    monkeypatch.setenv("METAFLOW_RUNTIME_ENVIRONMENT", "local")
    monkeypatch.setattr(flowconfig.sys, "argv", ["flow.py", "run"])
    with pytest.raises(flowconfig.ConfigError, match="train_retrieval gets 1"):
        flowconfig.check(values)
    monkeypatch.setenv("METAFLOW_RUNTIME_ENVIRONMENT", "kubernetes")
    flowconfig.check(values)


def test_resources_are_settings_of_the_file_only():
    """A Parameter could not size a container (decorators are fixed at deploy time), so none is
    offered; the file's value is checked like any other."""
    file_only = {s.key for s in SETTINGS if s.file_only}
    assert file_only == {f"deploy.{name}" for name in ("cpu", "memory", "ray_memory", "timeout_hours", "retries",
                                                                "schedule", "image", "ray_token_secret",
                                                                "publish_secret")}
    with pytest.raises(flowconfig.ConfigError, match=r"deploy.memory \(configuration file only\) must be at least"):
        flowconfig.check({"deploy.memory": 100})


def test_a_metaflow_profile_sending_every_run_to_kubernetes_counts_as_remote(monkeypatch):
    """DEFAULT_DECOSPECS (a Metaflow profile or METAFLOW_DEFAULT_DECOSPECS) adds --with kubernetes
    to every command: the launcher then saw a local run and the pod a remote one."""
    from metaflow import metaflow_config

    monkeypatch.setattr(metaflow_config, "DEFAULT_DECOSPECS", "kubernetes:cpu=4 card")
    assert flowconfig.runs_remotely(["flow.py", "run"])
    monkeypatch.setattr(metaflow_config, "DEFAULT_DECOSPECS", "card")
    assert not flowconfig.runs_remotely(["flow.py", "run"])


class _Flow:
    """What settings_of reads from a running flow: a Parameter attribute per setting and the Config."""

    def __init__(self, file: dict[str, object], command_line: dict[str, object]):
        values = {s.key: s.default for s in SETTINGS} | file
        self.config = flowconfig.nest(values)
        for s in SETTINGS:
            if not s.file_only:
                setattr(self, s.attribute, command_line.get(s.key, values[s.key]))


def test_remotely_the_file_sizes_the_containers_so_the_command_line_may_not_resize_them(monkeypatch):
    """@resources is fixed from the file when the flow is launched or deployed; Ray reads the
    Parameters: --num-cpus 8 on a 2-CPU pod, or a GPU worker in a pod without one."""
    file = {"publish.repository_url": "https://pypi.example/movierec/", "deploy.image": IMAGE}
    monkeypatch.setenv("METAFLOW_RUNTIME_ENVIRONMENT", "kubernetes")
    with pytest.raises(MetaflowException, match=r"ray.num_cpus \(--num-cpus\) is 8 but the file says 2"):
        flowconfig.settings_of(_Flow(file, {"ray.num_cpus": 8}))
    assert flowconfig.settings_of(_Flow(file | {"ray.num_cpus": 8}, {})).ray.num_cpus == 8
    monkeypatch.setenv("METAFLOW_RUNTIME_ENVIRONMENT", "local")  # locally nothing is sized by the file
    assert flowconfig.settings_of(_Flow(file, {"ray.num_cpus": 8})).ray.num_cpus == 8


def test_a_remote_run_needs_a_repository_url_from_the_file_or_the_command_line(monkeypatch):
    """The file alone need not have one for `run --with kubernetes --repository-url ...` (parsed
    before the option is read); the run's settings must."""
    defaults = {s.key: s.default for s in SETTINGS} | {"deploy.image": IMAGE}
    monkeypatch.setattr(flowconfig.sys, "argv", ["flow.py", "run", "--with", "kubernetes"])
    flowconfig.check(defaults)  # the file, as parsed for `run --with kubernetes --repository-url ...`
    monkeypatch.setattr(flowconfig.sys, "argv", ["flow.py", "--with", "kubernetes", "argo-workflows", "create"])
    with pytest.raises(flowconfig.ConfigError, match="is required when steps run on Kubernetes"):
        flowconfig.check(defaults)  # a deployment takes its values from the file
    monkeypatch.setenv("METAFLOW_RUNTIME_ENVIRONMENT", "kubernetes")
    flowconfig.settings_of(_Flow({"deploy.image": IMAGE}, {"publish.repository_url": "https://pypi.example/movierec/"}))
    with pytest.raises(MetaflowException, match=r"publish.repository_url \(--repository-url\) is required"):
        flowconfig.settings_of(_Flow({"deploy.image": IMAGE}, {}))


def test_a_local_run_publishes_with_its_own_environment_not_the_publish_secret():
    """The publish secret was given to a local run's publish step too: @secrets then refused the
    run where TWINE_* were already exported (a CI job, as buildspec.yml does: "Secret ... will
    inject 'TWINE_USERNAME' as env var, but it already exists in env"), and a laptop needed the
    secret backend's credentials for what its own TWINE_* or AWS role already did."""
    config = flowconfig.nest({**{s.key: s.default for s in SETTINGS}, "deploy.image": IMAGE,
                              "deploy.publish_secret": "aws-secrets-manager.movierec-pypi"})
    assert flowconfig.step_decorators("publish", config, None) == {
        "resources": {"cpu": 2, "memory": 8192}, "timeout": {"hours": 24}}
    remote = flowconfig.step_decorators("publish", config, flowconfig.Compute("kubernetes", {}))
    assert remote["secrets"] == {"sources": ["aws-secrets-manager.movierec-pypi"]}


def test_an_inputs_digest_is_the_sha256_of_its_pickle_numpy_arrays_too():
    """``step_frame`` compares inputs by the digest of their streamed pickle; protocol 5 writes a
    numpy array's buffer as a ``PickleBuffer``, which the first sink took ``len()`` of and failed."""
    import hashlib
    import pickle

    import numpy as np

    for value in (np.arange(300_000, dtype=np.float32), {"titles": ["Heat", "Heat"], "ids": np.arange(5)}, "x" * 10**6):
        expected = hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()
        assert flowconfig.pickle_digest(value) == expected
