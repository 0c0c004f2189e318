"""The flow compiled for production schedulers, as a Metaflow engineer deploys it: Argo Workflows
(``--with kubernetes argo-workflows create --only-json``) and AWS Step Functions (``--with batch
step-functions create --only-json``), against a real S3/IAM/EC2/Batch API (moto's server, on
loopback), where Metaflow uploads the code package and registers the Batch job definitions.

Each compiled step must carry what a fixed configuration asks for, written out here as literal
values: the file's image, CPUs, memory, GPUs, /dev/shm for Ray, timeout and retries; the code
package must hold the ``movierec`` modules; no parameter default may be a path of the deploying
machine.
"""

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import BUDGET, FLOW, ML100K, free_port, wait_for_http

from movierec.training import cluster

CLUSTER_FLOW = str(Path(FLOW).with_name("recommender_cluster_flow.py"))
IMAGE = "registry.example/movierec:1.0"
PRODUCTION = {"publish": {"repository_url": "https://pypi.example/movierec/"}, "deploy": {"image": IMAGE}}


def configuration(**sections: dict) -> str:
    """PRODUCTION (a package repository and the image: what a deployment needs) with ``sections``
    merged into it, as the JSON of a ``--config-value``."""
    merged = {name: dict(values) for name, values in PRODUCTION.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return json.dumps(merged)


INDEX = configuration()
BUCKET = "movierec-ci"
ACCOUNT_ROLE = "arn:aws:iam::123456789012:role/movierec"
PACKAGE = Path(__file__).resolve().parents[1] / "movierec"
MODULES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))  # subpackages' too (data/)


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """A moto server on loopback with a bucket for Metaflow's datastore and a Batch job queue:
    (environment for the flow's commands, a boto3 session factory)."""
    import boto3

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        wait_for_http(endpoint + "/moto-api/", proc, "moto's server")

        def client(service: str):
            return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                                aws_access_key_id="test", aws_secret_access_key="test")

        client("s3").create_bucket(Bucket=BUCKET)
        role = client("iam").create_role(RoleName="movierec", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        ec2 = client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="movierec", Description="movierec", VpcId=vpc)["GroupId"]
        batch = client("batch")
        env = batch.create_compute_environment(
            computeEnvironmentName="movierec", type="MANAGED", serviceRole=role,
            computeResources={"type": "FARGATE", "maxvCpus": 16, "subnets": [subnet], "securityGroupIds": [group]})
        batch.create_job_queue(jobQueueName="movierec", state="ENABLED", priority=1, computeEnvironmentOrder=[
            {"order": 1, "computeEnvironment": env["computeEnvironmentArn"]}])
        flow_env = {**os.environ, **creds, "AWS_ENDPOINT_URL": endpoint, "METAFLOW_S3_ENDPOINT_URL": endpoint,
                    "METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{BUCKET}/metaflow",
                    "METAFLOW_KUBERNETES_NAMESPACE": "movierec", "METAFLOW_BATCH_JOB_QUEUE": "movierec",
                    "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": role, "METAFLOW_ECS_FARGATE_EXECUTION_ROLE": role,
                    "METAFLOW_SFN_IAM_ROLE": role, "METAFLOW_SFN_DYNAMO_DB_TABLE": "movierec"}
        yield flow_env, client
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def deploy(env: dict, tmp_path: Path, *args: str, flow: str = FLOW) -> subprocess.CompletedProcess:
    """The ``flow``'s deployment command ``args`` with the S3 datastore, compiled only (``--only-json``)."""
    return subprocess.run([sys.executable, flow, "--no-pylint", "--datastore", "s3", *args, "--only-json"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def compile_flow(env: dict, tmp_path: Path, *args: str, flow: str = FLOW) -> dict:
    out = deploy(env, tmp_path, *args, flow=flow)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def argo(env: dict, tmp_path: Path, config: str = INDEX, flow: str = FLOW) -> dict[str, dict]:
    """Each step's Argo template of the ``flow`` compiled with the ``config`` Config (JSON), the
    Kubernetes options of a cluster's set-up on the command line (no image: the file has it)."""
    workflow = compile_flow(env, tmp_path, "--config-value", "config", config, "--with",
                            "kubernetes:service_account=movierec-steps", "argo-workflows", "create", flow=flow)
    templates = {t["name"].replace("-", "_"): t for t in workflow["spec"]["templates"]
                 if "container" in t or "resource" in t}
    return {"workflow": workflow, **templates}


STEPS = ("start", "split", "train_retrieval", "tune_ranking", "build_index", "train_ranker", "evaluate", "publish",
         "end")
# What each step asks for under the default settings (deploy.cpu 2, deploy.memory 8192 MB,
# deploy.ray_memory 16384 MB with a third as /dev/shm, ray.num_cpus 2, 24 h, 2 retries of start,
# the Ray steps and publish): (CPUs, memory MB, /dev/shm MB or None, retries).
EXPECTED = {"start": (2, 8192, None, 2), "split": (2, 8192, None, 0), "train_retrieval": (2, 16384, 5461, 2),
            "tune_ranking": (2, 16384, 5461, 2), "build_index": (2, 8192, None, 0),
            "train_ranker": (2, 8192, None, 0), "evaluate": (2, 8192, None, 0), "publish": (2, 8192, None, 2),
            "end": (2, 8192, None, 0)}


# The module's longest test comes first: xdist hands a worker its next share when two tests are left, so a long
# last test held that share back for minutes.
def cluster_processes() -> list[str]:
    """Ray processes of a cluster whose head is on @metaflow_ray's port (6379): a local Ray of
    another step or test (random ports) is not one of them."""
    import psutil

    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        line = " ".join(p.info["cmdline"] or ())
        port = cluster.CLUSTER_HEAD_PORT  # the head's GCS port: raylets name it as host:port, gcs_server as =port
        if p.info["name"] in ("raylet", "gcs_server") and re.search(rf"(:|port=){port}\b", line):
            found.append(line[:200])
    return found


def test_cluster_flow_trains_retrieval_across_two_ray_nodes_with_its_results_in_s3(aws, tmp_path):
    """The whole RecommenderClusterFlow run here with Metaflow's S3 datastore (moto) and two
    @metaflow_ray nodes: the retrieval model trains with one Ray Train worker on each node (2
    workers of the cluster's CPUs: a node has this machine's 2), its checkpoint goes to the run's
    S3 datastore, whose path (not a folder of the driver's) is what a node on another machine
    reaches, gather_retrieval hands the control task's model on, and the cluster's processes are
    gone afterwards (``@metaflow_ray`` leaves every node running)."""
    from metaflow import Runner

    env, client = aws
    # --datastore alone chooses S3 (Ray's storage followed only Metaflow's configured default)
    run_env = {k: v for k, v in env.items() if k != "METAFLOW_DEFAULT_DATASTORE"}
    # ML-100K's first 20,000 ratings: what is checked is where the work runs and its results go, not what it learns
    options = {**BUDGET, "retrieval_epochs": 2, "ray_nodes": 2, "retrieval_workers": 2, "data_dir": str(ML100K),
               "max_ratings": 20_000, "index_dir": str(tmp_path / "pypi")}
    with Runner(CLUSTER_FLOW, show_output=False, pylint=False, datastore="s3", env=run_env, cwd=tmp_path).run(
            **options) as running:
        status, out, err = running.status, running.stdout, running.stderr
        run_id = running.run.id
    assert status == "successful", (out + err)[-5000:]
    assert re.search(r"2 worker\(s\) x \d+ thread\(s\) on cpu \(2 nodes\)", out), out[-3000:]
    prefix = f"metaflow/movierec_ray/RecommenderClusterFlow/{run_id}/train_on_cluster/0/retrieval/"
    keys = [o["Key"] for o in client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
    assert any(k.endswith("/model.pt") for k in keys), keys
    code = ("import sys; from metaflow import Run; r = Run(sys.argv[1]); "
            "print(r['gather_retrieval'].task.data.retrieval.nodes, r['end'].task.data.metrics is not None)")
    read = subprocess.run([sys.executable, "-c", code, f"RecommenderClusterFlow/{run_id}"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert read.stdout.split() == ["2", "True"], read.stderr[-3000:]
    assert cluster_processes() == []


def test_argo_steps_get_the_image_resources_timeout_and_retries_of_the_configuration(aws, tmp_path):
    """The image is the file's deploy.image (no `:image=` on the command line, which compiled every
    step to python:3.11), and the command line's Kubernetes options are kept with it."""
    env, client = aws
    templates = argo(env, tmp_path)
    for step in STEPS:
        template, (cpu, memory, shm_mb, retries) = templates[step], EXPECTED[step]
        container = template["container"]
        assert container["image"] == IMAGE, step
        assert template["serviceAccountName"] == "movierec-steps", step
        requests = container["resources"]["requests"]
        assert (float(requests["cpu"]), float(requests["memory"].removesuffix("M"))) == (cpu, memory), step
        assert template["activeDeadlineSeconds"] == 86400, step
        assert template.get("retryStrategy", {}).get("limit", 0) == retries, step
        shm = next(v for v in template["volumes"] if v["name"] == "dhsm")["emptyDir"]
        assert shm.get("sizeLimit") == (f"{shm_mb}Mi" if shm_mb else None), step
    annotations = templates["workflow"]["metadata"]["annotations"]
    project = annotations["metaflow/project_flow_name"]  # @project: each branch deploys its own copy
    assert project.startswith("movierec.user.") and project.endswith(".RecommenderFlow"), project
    assert "metaflow/cron" not in annotations  # no schedule unless the configuration asks for one

    # No parameter default may be a path of the machine that deployed the flow.
    params = json.loads(templates["workflow"]["metadata"]["annotations"]["metaflow/parameters"])
    for name, spec in params.items():
        value = json.loads(spec["value"]) if spec["value"] else ""
        assert not (isinstance(value, str) and value.startswith(("/", "~", str(Path.home())))), (name, value)

    # The code package the pods download holds every movierec module beside the flow, and what publish
    # builds the wheel from (flowconfig.PACKAGE_SUFFIXES).
    code_url = next(e["value"] for e in templates["start"]["container"]["env"] if e["name"] == "METAFLOW_CODE_URL")
    bucket, key = code_url.removeprefix("s3://").split("/", 1)
    blob = client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        names = set(tar.getnames())
    assert "recommender_flow.py" in names
    assert {f"movierec/{m}" for m in MODULES} <= names
    assert {"setup.cfg", "pyproject.toml", "README.md", "movierec/serving/web/index.html"} <= names


def test_gpu_settings_of_the_configuration_reach_the_containers(aws, tmp_path):
    """--gpus-per-worker on the command line cannot size a container (decorators are fixed at
    deploy time): the file's retrieval and Tune GPU settings do."""
    env, _ = aws
    config = configuration(retrieval={"workers": 2, "gpus_per_worker": 1}, tune={"trials_per_gpu": 4})
    templates = argo(env, tmp_path, config)
    gpus = {s: templates[s]["container"]["resources"]["limits"].get("nvidia.com/gpu") for s in STEPS}
    assert gpus["train_retrieval"] == "2" and gpus["tune_ranking"] == "1"
    assert all(g is None for s, g in gpus.items() if s not in ("train_retrieval", "tune_ranking")), gpus


def test_a_configured_schedule_retrains_the_deployment(aws, tmp_path):
    env, _ = aws
    workflow = argo(env, tmp_path, configuration(deploy={"schedule": "weekly"}))["workflow"]
    assert json.loads(workflow["metadata"]["annotations"]["metaflow/cron"])["schedule"] == "0 0 ? * SUN"


def step_functions(env: dict, tmp_path: Path, config: str = INDEX) -> dict[str, dict]:
    """Each step's state of the state machine compiled with the ``config`` Config (JSON)."""
    machine = compile_flow(env, tmp_path, "--config-value", "config", config, "step-functions", "create",
                           "--authorize", "movierec-tests")
    states: dict[str, dict] = {}

    def walk(level: dict) -> None:
        for name, state in level.items():
            states[name] = state
            for branch in state.get("Branches", []):
                walk(branch["States"])

    walk(machine["States"])
    return states


def test_step_functions_jobs_get_the_image_resources_timeout_and_retries(aws, tmp_path):
    env, client = aws
    states = step_functions(env, tmp_path)
    batch = client("batch")
    for step in STEPS:
        params, (cpu, memory, _, retries) = states[step]["Parameters"], EXPECTED[step]
        asked = {r["Type"]: r["Value"] for r in params["ContainerOverrides"]["ResourceRequirements"]}
        assert asked == {"VCPU": str(cpu), "MEMORY": str(memory)}, step
        assert params["RetryStrategy"]["Attempts"] == 1 + retries, step
        assert params["Timeout"]["AttemptDurationSeconds"] == 86400, step
        job = batch.describe_job_definitions(jobDefinitions=[params["JobDefinition"]])["jobDefinitions"][0]
        assert job["containerProperties"]["image"] == IMAGE, step


def test_a_deployment_without_a_package_repository_or_an_image_is_refused(aws, tmp_path):
    """publish's default, a local index folder, would be written inside its container and lost;
    without an image every step compiled to Metaflow's python:3.11, which has no torch and no Ray."""
    env, _ = aws
    out = deploy(env, tmp_path, "--config-value", "config", json.dumps({"deploy": {"image": IMAGE}}),
                 "argo-workflows", "create")
    assert out.returncode != 0
    assert "publish.repository_url (--repository-url) is required when steps run on Kubernetes" in out.stderr
    for command in (["argo-workflows", "create"], ["step-functions", "create"],
                    ["--with", "kubernetes:image=python:3.11", "argo-workflows", "create"]):
        out = deploy(env, tmp_path, "--config-value", "config", json.dumps({"publish": PRODUCTION["publish"]}),
                     *command)
        assert out.returncode != 0, command
        assert ("deploy.image (configuration file only) is required when steps run on Kubernetes or AWS Batch: "
                "without it Metaflow runs every step in python:3.11, which has neither torch nor Ray") in out.stderr
    out = deploy(env, tmp_path, "--config-value", "config", INDEX, "--with", "kubernetes:image=python:3.11",
                 "argo-workflows", "create")
    assert out.returncode != 0
    assert (f"--with kubernetes names the image python:3.11, but deploy.image (configuration file only) is {IMAGE}: "
            "the steps run in the file's image") in out.stderr


@pytest.mark.parametrize("scheduler", ["argo-workflows", "step-functions"])
def test_publish_gets_its_credentials_secret_in_the_deployed_containers(aws, tmp_path, scheduler):
    """A deployed flow had no way to its repository credentials: the publish step now gets the
    configured @secrets source, in its container itself. The container is loaded here as the
    scheduler runs it: the code package Metaflow uploaded, unpacked, with the compiled step's
    environment (the configuration travels in the package, METAFLOW_FLOW_CONFIG_VALUE points to it)."""
    env, client = aws
    config = configuration(deploy={"publish_secret": "aws-secrets-manager.movierec-pypi"})
    if scheduler == "argo-workflows":
        compute = "kubernetes"
        pod_env = {e["name"]: e["value"] for e in argo(env, tmp_path, config)["publish"]["container"]["env"]
                   if "value" in e}
    else:
        compute = "batch"
        overrides = step_functions(env, tmp_path, config)["publish"]["Parameters"]["ContainerOverrides"]
        pod_env = {e["Name"]: e["Value"] for e in overrides["Environment"] if "Value" in e}
    bucket, key = pod_env["METAFLOW_CODE_URL"].removeprefix("s3://").split("/", 1)
    pod = tmp_path / "pod"
    with tarfile.open(fileobj=io.BytesIO(client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())) as tar:
        tar.extractall(pod, filter="data")
    names = ("METAFLOW_FLOW_CONFIG_VALUE", "METAFLOW_RUNTIME_ENVIRONMENT", "METAFLOW_DEFAULT_DATASTORE")
    out = subprocess.run([sys.executable, "recommender_flow.py", "--quiet", "--no-pylint", "output-raw"], cwd=pod,
                         env={**env, **{n: pod_env[n] for n in names}, "PYTHONPATH": f"{pod}/.mf_code",
                              "METAFLOW_EXTRACTED_ROOT": str(pod)},  # as the pod's command sets them
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    steps = {block.split()[0]: block for block in re.split(r"^\[", out.stdout, flags=re.M) if block.strip()}
    inserted = "static (inserted by movierec.training.flowconfig.configured)"
    assert f"secrets<{inserted} sources=['aws-secrets-manager.movierec-pypi']" in steps["publish"]
    assert "secrets<" not in steps["evaluate"] and "secrets<" not in steps["start"]
    assert f"{compute}<static (inserted by movierec.training.flowconfig.configured) " in steps["publish"]
    assert f"image={IMAGE}" in steps["publish"]


def load_in_a_step(env: dict, data_dir: str) -> subprocess.CompletedProcess:
    """``pipeline.load_data`` in a fresh process with the flow's environment, as ``start`` runs it."""
    code = ("import json, sys; from movierec import pipeline; from movierec.core import settings; "
            "d = pipeline.load_data(settings.Settings(data=settings.DataSettings(dir=sys.argv[1]))); "
            "print(json.dumps(d.stats()))")
    return subprocess.run([sys.executable, "-c", code, data_dir], env=env, capture_output=True, text=True, timeout=300)


def test_data_dir_in_s3_loads_like_the_local_folder(aws, ml100k_dir):
    """`--data-dir s3://...` stopped with "not a directory"; the folder now comes through
    Metaflow's S3 client (the datastore's endpoint and credentials) and loads as the local copy."""
    from movierec import data

    env, client = aws
    for path in ml100k_dir.glob("ml-100k.*"):
        client("s3").upload_file(str(path), BUCKET, f"datasets/ml-100k/{path.name}")
    client("s3").put_object(Bucket=BUCKET, Key="datasets/ml-100k/README.txt", Body=b"not a layout file")
    out = load_in_a_step(env, f"s3://{BUCKET}/datasets/ml-100k")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1]) == data.load_dataset(ml100k_dir).stats()

    empty = load_in_a_step(env, f"s3://{BUCKET}/datasets/nothing-here/")
    assert empty.returncode != 0
    assert f"s3://{BUCKET}/datasets/nothing-here/: no MovieLens files there (expected one of:" in empty.stderr
    assert "[data] downloading 3 files" in out.stdout  # the layout's files, not the README beside them


RAY_STEPS_CODE = """
import json
from movierec.training import cluster
from movierec import pipeline
from movierec.core import settings
from movierec.data import synthetic
from movierec.data.features import encode
from movierec.data.split import DataSplit

enc = encode(synthetic.generate(n_users=200, n_items=150, n_ratings=6000, seed=3))
data_split = DataSplit(enc, pipeline.split_for(enc, "tfrs", 0))
run = settings.Settings(retrieval=settings.RetrievalConfig(epochs=2), tune=settings.TuneConfig(samples=2, epochs=3),
                        ray=settings.RaySettings(train="always", tune="always"))  # Ray's results, even on toy data
where = {step: cluster.storage_path("RecommenderFlow", "7", step, 1, datastore="s3")
         for step in ("train_retrieval", "tune_ranking")}
retrieval = pipeline.train_retrieval(data_split, run, where["train_retrieval"])
ranking = pipeline.tune_ranking(data_split, run, where["tune_ranking"])
print(json.dumps({"where": where, "epochs": len(retrieval.history), "curves": ranking.curves}))
"""


def test_ray_steps_keep_their_results_in_the_s3_datastore_best_checkpoints_only(aws, tmp_path):
    """A folder of the driver's is unreachable from a Ray cluster's other nodes (Ray Train refuses
    it there): with Metaflow's datastore on S3 the Ray steps keep their results in it, one path per
    attempt; and a Tune trial, which checkpoints on each improvement, keeps only its last (best)
    checkpoint, where an ML-100K run kept ~40 files for ever."""
    env, client = aws
    out = subprocess.run([sys.executable, "-c", RAY_STEPS_CODE], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    prefix = "metaflow/movierec_ray/RecommenderFlow/7"
    for step, where in result["where"].items():
        assert where.startswith(f"s3://{BUCKET}/{prefix}/{step}/1?endpoint_override=127.0.0.1%3A"), where
    pages = client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert any(k.startswith(f"{prefix}/train_retrieval/1/retrieval/") for k in keys)
    checkpoints: dict[str, set[str]] = {}
    for key in keys:
        parts = key.split("/")
        if key.startswith(f"{prefix}/tune_ranking/1/ranking/") and any(p.startswith("checkpoint_") for p in parts):
            trial = parts[parts.index("ranking") + 1]
            checkpoints.setdefault(trial, set()).add(next(p for p in parts if p.startswith("checkpoint_")))
    assert len(checkpoints) == 2, checkpoints
    assert all(len(saved) == 1 for saved in checkpoints.values()), checkpoints
    # ...though each trial saved one at every improvement, and one improved more than once
    best: dict[str, float] = {}
    improvements: dict[str, int] = {}
    for curve in result["curves"]:
        trial = str(curve["trial"])
        if curve["val_rmse"] < best.get(trial, float("inf")):
            best[trial] = curve["val_rmse"]
            improvements[trial] = improvements.get(trial, 0) + 1
    assert max(improvements.values()) > 1, improvements
    assert result["epochs"] >= 1


def test_the_image_installs_the_runtime_lock_on_the_python_it_was_made_with():
    """The Dockerfile cannot be built here (no Docker daemon, no registry to pull a base image
    from); what can drift is checked: it installs requirements/runtime.txt, hashes required, on
    the Python version pip-compile made that lock with, and the lock holds what a remote step
    needs beyond the flow's own imports (boto3 for Metaflow's S3 datastore, build and twine to
    publish)."""
    import re

    repo = Path(__file__).resolve().parents[1]
    dockerfile, lock = (repo / "Dockerfile").read_text(), (repo / "requirements" / "runtime.txt").read_text()
    python = re.search(r"autogenerated by pip-compile with Python (\d+\.\d+)", lock).group(1)
    assert re.search(rf"^FROM python:{re.escape(python)}-\S+$", dockerfile, re.M)
    assert "COPY requirements/runtime.txt /tmp/runtime.txt" in dockerfile
    install = re.search(r"^RUN (.*?)(?<!\\)$", dockerfile, re.M | re.S).group(1)
    assert "--require-hashes" in install and "-r /tmp/runtime.txt" in install
    pinned = set(re.findall(r"^([a-z0-9_.-]+)==", lock, re.M))
    assert {"metaflow", "ray", "torch", "boto3", "build", "twine", "annoy", "implicit", "pyarrow"} <= pinned



def jobset(template: dict) -> dict:
    """The JobSet manifest of a parallel step's Argo template (its replica counts are Argo
    expressions, which YAML would read as mappings: kept as text)."""
    import yaml

    return yaml.safe_load(re.sub(r"replicas: (\{\{.*\}\})", r"replicas: '\1'", template["resource"]["manifest"]))


def test_cluster_flow_deploys_its_ray_nodes_to_argo_as_one_jobset(aws, tmp_path):
    """RecommenderClusterFlow's train_on_cluster becomes a Kubernetes JobSet: a control pod and
    num_parallel - 1 worker pods (num_parallel from ray.nodes at run time), each sized like a Ray
    step, with Ray's token mode on (the token comes from the configured secret), retried whole."""
    env, _ = aws
    config = configuration(deploy={"ray_token_secret": "aws-secrets-manager.movierec-ray"})
    templates = argo(env, tmp_path, config, flow=CLUSTER_FLOW)
    assert {"train_retrieval", "train_on_cluster", "gather_retrieval", "tune_ranking"} <= set(templates)
    outputs = {p["name"]: p for p in templates["train_retrieval"]["outputs"]["parameters"]}
    assert outputs["num-parallel"]["valueFrom"]["path"] == "/mnt/out/num_parallel"
    manifest = jobset(templates["train_on_cluster"])
    jobs = {job["name"]: job for job in manifest["spec"]["replicatedJobs"]}
    assert jobs["control"]["replicas"] == 1 and "workerCount" in jobs["worker"]["replicas"]
    for name, job in jobs.items():
        pod = job["template"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == IMAGE, name
        assert float(container["resources"]["requests"]["cpu"]) == 2, name  # ray.num_cpus
        assert float(container["resources"]["requests"]["memory"].removesuffix("M")) == 16384, name
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"], name
        shm = next(v for v in pod["volumes"] if v["name"] == "dhsm")["emptyDir"]
        assert shm["sizeLimit"] == "5461Mi", name
    assert templates["train_on_cluster"]["retryStrategy"]["limit"] == 2

    refused = deploy(env, tmp_path, "--config-value", "config", INDEX, "argo-workflows", "create", flow=CLUSTER_FLOW)
    assert refused.returncode != 0
    assert "deploy.ray_token_secret (configuration file only) is required when train_on_cluster runs" in \
        refused.stderr
    bare_id = configuration(deploy={"ray_token_secret": "movierec-ray"})  # it compiled; every pod failed at @secrets
    unnamed = deploy(env, tmp_path, "--config-value", "config", bare_id, "argo-workflows", "create", flow=CLUSTER_FLOW)
    assert unnamed.returncode != 0
    assert "deploy.ray_token_secret (configuration file only) must name its backend" in unnamed.stderr
