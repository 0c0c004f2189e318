"""Building and publishing wheels: versions, contents, atomic and idempotent uploads."""

import base64
import hashlib
import http.server
import io
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from movierec.core.settings import PublishSettings
from movierec.serving.bundle import KNOWN_FILES
from movierec.training import packaging


def test_run_version_is_pep440_and_uploadable():
    v = Version(packaging.run_version("1795493907879854", base="0.1.0"))
    assert str(v) == "0.1.0.post1795493907879854"
    assert v.local is None and not v.is_prerelease  # any index takes it; pip installs it without --pre
    assert Version(packaging.run_version("1795493907879855", base="0.1.0")) > v  # later runs are newer
    other = packaging.run_version("argo-movierec-abc12", base="0.1.0")
    assert Version(other).post is not None and other == packaging.run_version("argo-movierec-abc12", base="0.1.0")


def test_versions_follow_the_start_time_whatever_the_scheduler_calls_the_run():
    """Argo's and Step Functions' run ids are names, hashed to versions in random order, and a
    metadata service's count from 1, below every local run: the run's start time orders them."""
    local = packaging.run_version("1795493907879854", 1795493907879854, base="0.1.0")
    argo = packaging.run_version("argo-recommenderflow-zz9", 1795493907880000, base="0.1.0")
    sfn = packaging.run_version("sfn-0a1b2c3d", 1795493907990000, base="0.1.0")
    service = packaging.run_version("7", 1795493908000000, base="0.1.0")
    assert local == "0.1.0.post1795493907879854"  # a local run's id is its start time: versions do not change
    assert Version(local) < Version(argo) < Version(sfn) < Version(service)


def test_a_resumed_run_is_versioned_when_it_was_created_not_by_the_start_it_cloned():
    """resume clones start, and with it start's time: the resumed run's version was its origin's,
    so one that re-ran training found "its" version published (by the origin) and reported the
    origin's wheel instead of uploading its own model. The resumed run's creation time names it,
    not the publish attempt's clock: a retried publish makes no second version of one run."""
    from movierec.pipeline import version_time

    assert version_time(1795493907879854, None, created_us=None) == 1795493907879854
    assert version_time(1795493907879854, None, created_us=1795494000000000) == 1795493907879854
    assert version_time(1795493907879854, "1795493907879854", created_us=1795494000000000) == 1795494000000000
    assert version_time(None, "argo-recommenderflow-zz9", created_us=1795494000000000) == 1795494000000000
    with pytest.raises(ValueError, match="needs its creation time"):
        version_time(1795493907879854, "1795493907879854", created_us=None)


def test_the_resumed_flow_publishes_its_own_version(runs):
    """The real flow, failed in evaluate and resumed (conftest's ``runs``): the resumed run's
    start is the origin's clone, its publish step stamps a later time, and the wheel is named by it."""
    from movierec.serving.bundle import read_bundle

    _, failed_run, resumed_status, resumed_run, _ = runs
    assert resumed_status == "successful"
    cloned = resumed_run["start"].task.data.started_us
    assert cloned == failed_run["start"].task.data.started_us
    info = read_bundle(resumed_run["publish"].task.data.bundle)[0]
    assert info["run_id"] == resumed_run.id and info["started_us"] > cloned
    # the run's creation time, which every retry of publish reads alike, not the attempt's clock: with local
    # metadata its run id, as its created_at moved when publish tagged the run (the promotion gate)
    assert info["started_us"] == int(resumed_run.id)
    assert resumed_run["publish"].task.data.publication["version"] == f"0.1.0.post{info['started_us']}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, tiny_bundle):
    return packaging.build_wheel(tiny_bundle, "0.1.0.post7", tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_code_bundle_and_console_script(wheel):
    assert wheel.name == "movierec-0.1.0.post7-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    for f in KNOWN_FILES:  # the tiny bundle carries per-user data and both ONNX graphs
        assert f"movierec/bundle/{f}" in names
    assert "movierec/serving/recommender.py" in names and "movierec/cli.py" in names
    assert {"movierec/data/__init__.py", "movierec/data/core.py", "movierec/data/__main__.py"} <= set(names)
    assert not [n for n in names if "__pycache__" in n]
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Version: 0.1.0.post7" in text
    requires = [line.removeprefix("Requires-Dist: ") for line in text.splitlines() if line.startswith("Requires-Dist:")]
    # recommending needs numpy and Annoy only; torch, Ray and Metaflow come with the train extra
    assert sorted(r for r in requires if "extra ==" not in r) == ["annoy>=1.17", "numpy>=1.26"]
    assert 'torch~=2.13.0; extra == "train"' in requires
    assert {'kubernetes>=29; extra == "deploy"', 'boto3>=1.34; extra == "deploy"'} <= set(requires)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "movierec = movierec.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    init = zipfile.ZipFile(wheel).read("movierec/__init__.py").decode()
    assert '__version__ = "0.1.0.post7"' in init


def test_local_index_publish_is_idempotent(wheel, tmp_path):
    index = tmp_path / "idx"
    assert packaging.publish_to_directory(wheel, index) is True
    assert packaging.publish_to_directory(wheel, index) is False
    assert [p.name for p in (index / "packages").iterdir()] == [wheel.name]
    page = (index / "simple" / "movierec" / "index.html").read_text()
    assert f"../../packages/{wheel.name}#sha256={hashlib.sha256(wheel.read_bytes()).hexdigest()}" in page
    assert not list(index.glob(".incoming-*"))


def test_failed_upload_leaves_no_partial_package(wheel, tmp_path, monkeypatch):
    def broken_upload(*args, **kwargs):
        raise packaging.PublishError("network went away")

    monkeypatch.setattr(packaging, "_twine_upload", broken_upload)
    index = tmp_path / "idx"
    with pytest.raises(packaging.PublishError, match="network went away"):
        packaging.publish_to_directory(wheel, index)
    assert list((index / "packages").iterdir()) == []
    assert not list(index.glob(".incoming-*"))


def test_build_refuses_a_tree_without_packaging_files(tiny_bundle, tmp_path):
    with pytest.raises(packaging.PublishError, match="setup.cfg missing"):
        packaging.build_wheel(tiny_bundle, "0.1.0.post1", tmp_path, source_root=tmp_path)


def test_publish_leaves_no_temporary_folder_and_prints_a_pinned_command(tiny_bundle, tmp_path, monkeypatch):
    """publish() left its /tmp/movierec-wheel-* folder behind after every run."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    publication = packaging.publish(tiny_bundle, PublishSettings(index_dir=str(tmp_path / "idx")))
    assert list(tmp.iterdir()) == []
    assert publication.version == packaging.run_version("test")
    on_disk = tmp_path / "idx" / "packages" / publication.wheel
    wheel = on_disk.read_bytes()
    assert publication.sha256 == hashlib.sha256(wheel).hexdigest() and publication.size == len(wheel)
    assert publication.install_command == f"pip install 'movierec @ {on_disk.as_uri()}#sha256={publication.sha256}'"


@pytest.mark.parametrize("url, message", [
    ("https://aws:s3cr3t@example.com/pypi/", "must not hold credentials"),
    ("https://token@example.com/pypi/", "must not hold credentials"),
    ("http://example.com/pypi/", "must be https"),
    ("ftp://127.0.0.1/", "must be https"),
])
def test_repository_urls_without_https_or_with_credentials_are_refused(url, message):
    with pytest.raises(packaging.PublishError, match=message):
        packaging.check_repository_url(url)


def test_loopback_http_and_https_repositories_are_accepted():
    for url in ("https://example.com/pypi/", "http://127.0.0.1:8080/", "http://localhost/", "http://[::1]:1/"):
        assert packaging.check_repository_url(url) == url


def test_a_repository_that_does_not_list_the_wheel_gets_the_pinned_isolated_command(tmp_path):
    """Without a link to name, the command still takes movierec from that repository alone
    (--isolated: no extra index from the user's pip.conf or PIP_* variables) and pins the version."""
    server, url = _serve(type("Empty", (_Recorder,), {"seen": []}))  # answers 404
    wheel = tmp_path / "movierec-1.0-py3-none-any.whl"
    wheel.write_bytes(b"x")
    try:
        assert packaging.install_command("1.0", wheel, url + "/legacy/") == \
            f"pip install --isolated --index-url {url}/simple/ movierec==1.0"
    finally:
        server.shutdown()


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 302 to ``target`` when it has one, else 404; records the headers it was sent."""

    target: str = ""
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).seen.append(dict(self.headers))
        if self.target:
            self.send_response(302)
            self.send_header("Location", self.target + self.path)
        else:
            self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(handler: type) -> tuple[http.server.HTTPServer, str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def test_credentials_do_not_follow_a_redirect_to_another_origin(monkeypatch):
    """The index check sent TWINE_* as basic auth and followed a 302 to another host, token and all."""
    other = type("Other", (_Recorder,), {"seen": []})
    repo = type("Repo", (_Recorder,), {"seen": []})
    other_server, other_url = _serve(other)
    repo.target = other_url
    repo_server, repo_url = _serve(repo)
    monkeypatch.setenv("TWINE_USERNAME", "aws")
    monkeypatch.setenv("TWINE_PASSWORD", "secret-token")
    try:
        with pytest.raises(packaging.PublishError, match="redirected .302. to http://127.0.0.1"):
            packaging.already_on_server(repo_url + "/", "movierec-1.0-py3-none-any.whl")
    finally:
        repo_server.shutdown()
        other_server.shutdown()
    assert repo.seen and repo.seen[0]["Authorization"].startswith("Basic ")
    assert other.seen == []  # nothing, let alone the token, reached the other origin


def test_a_url_with_credentials_is_refused_before_the_run_starts(metaflow_root):
    """Metaflow stores and prints parameter values: the URL is refused while parsing the command line."""
    from conftest import FLOW

    proc = subprocess.run([sys.executable, FLOW, "--no-pylint", "run", "--repository-url", "https://u:tok@x.org/"],
                          capture_output=True, text=True, cwd=metaflow_root, timeout=120)
    assert proc.returncode != 0 and "must not hold credentials" in proc.stderr
    assert "tok@" not in proc.stdout and "Workflow starting" not in proc.stdout + proc.stderr


def test_a_bundle_serving_would_refuse_is_not_published(tiny_bundle, tmp_path):
    """`python -m movierec.training.packaging --run` on a run from before bundle format 2 built a wheel that
    this version then refused to load in every installation."""
    old = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(tiny_bundle)) as zf, zipfile.ZipFile(old, "w") as out:
        for name in zf.namelist():
            out.writestr(name, b'{"format": 1}' if name == "model.json" else zf.read(name))
    with pytest.raises(packaging.PublishError, match="not publishing: bundle: model.json: bundle format 1"):
        packaging.build_wheel(old.getvalue(), "0.1.0.post1", tmp_path)


def _rebuilt(bundle: bytes) -> bytes:
    """The same run's bundle with one more metric: what a retried publish step builds again (a
    rebuild is never byte-identical: the bundle and the wheel carry the time they were made)."""
    import json

    src, out = zipfile.ZipFile(io.BytesIO(bundle)), io.BytesIO()
    info = json.loads(src.read("model.json"))
    info["metrics"] = [*info.get("metrics", []), {"model": "rebuilt"}]
    with zipfile.ZipFile(out, "w") as zf:
        for name in src.namelist():
            zf.writestr(name, json.dumps(info) if name == "model.json" else src.read(name))
    return out.getvalue()


@pytest.mark.integration  # a pypiserver process and four wheel builds
@pytest.mark.parametrize("where", ["local index", "repository"])
def test_publishing_a_version_again_reports_and_pins_the_wheel_already_published(tiny_bundle, tmp_path, where,
                                                                                 monkeypatch):
    """A retried publish step (or `--run` again) found its version published and printed the
    server's URL with the new build's sha256: pip refuses that hash. What is reported, returned
    and pinned is now the published file."""
    settings = PublishSettings(index_dir=str(tmp_path / "idx"))
    packages = tmp_path / "served"
    packages.mkdir()
    with packaging.LocalPypiServer(packages) as server:
        if where == "repository":
            settings = PublishSettings(repository_url=server.url + "/")
            monkeypatch.setenv("TWINE_USERNAME", "movierec")  # the test server takes any
            monkeypatch.setenv("TWINE_PASSWORD", "local")
        first = packaging.publish(tiny_bundle, settings)
        again = packaging.publish(_rebuilt(tiny_bundle), settings)
    # where each was published: the local index's packages folder, or the one the server serves
    folder = tmp_path / "idx" / "packages" if where == "local index" else packages
    first_wheel = (folder / first.wheel).read_bytes()
    assert first.uploaded and not again.uploaded and again.version == first.version
    assert again.wheel == first.wheel and again.sha256 == first.sha256 == hashlib.sha256(first_wheel).hexdigest()
    assert again.install_command.endswith(f"#sha256={first.sha256}'")


def _link_page(href: str) -> type:
    """A repository whose movierec index page links ``href``; records the headers of every request."""

    class Index(_Recorder):
        seen: list = []

        def do_GET(self):  # noqa: N802 (http.server's naming)
            type(self).seen.append(dict(self.headers))
            body = f'<a href="{href}">movierec-1.0-py3-none-any.whl</a>'.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Index


def _file_server(data: bytes) -> type:
    class Files(_Recorder):
        seen: list = []

        def do_GET(self):  # noqa: N802
            type(self).seen.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Files


def test_credentials_go_to_the_repository_origin_only_and_a_copy_counts_by_its_sha256(tmp_path, monkeypatch):
    """An index linking its wheel on another host got the TWINE_* Basic credentials sent there
    (over plain http too), and a link without #sha256= made `not a wheel` the published copy."""
    monkeypatch.setenv("TWINE_USERNAME", "aws")
    monkeypatch.setenv("TWINE_PASSWORD", "secret-token")
    wheel = b"PK\x03\x04 the published wheel"
    files = _file_server(wheel)
    files_server, files_url = _serve(files)
    name = "movierec-1.0-py3-none-any.whl"
    servers = [files_server]
    try:
        digest = hashlib.sha256(wheel).hexdigest()
        index = _link_page(f"{files_url}/packages/{name}#sha256={digest}")
        index_server, index_url = _serve(index)
        servers.append(index_server)
        copy = packaging.published_copy(name, index_url + "/", tmp_path, tmp_path)
        assert copy.read_bytes() == wheel
        assert index.seen[0]["Authorization"] == "Basic " + base64.b64encode(b"aws:secret-token").decode()
        assert files.seen and all("Authorization" not in h for h in files.seen)  # the other origin got no token

        unchecked = _link_page(f"{files_url}/packages/{name}")  # no #sha256=: nothing to check a download by
        unchecked_server, unchecked_url = _serve(unchecked)
        servers.append(unchecked_server)
        with pytest.raises(packaging.PublishError, match=f"lists {name} without a #sha256="):
            packaging.published_copy(name, unchecked_url + "/", tmp_path, tmp_path / "second")
        assert not (tmp_path / "second").exists()

        other = _link_page(f"{files_url}/packages/{name}#sha256={'0' * 64}")  # a sha256 the bytes do not have
        other_server, other_url = _serve(other)
        servers.append(other_server)
        with pytest.raises(packaging.PublishError, match="does not match the sha256 its index lists"):
            packaging.published_copy(name, other_url + "/", tmp_path, tmp_path / "third")
        assert not (tmp_path / "third").exists()
    finally:
        for server in servers:
            server.shutdown()


@pytest.mark.parametrize("status", [401, 403, 500])
def test_a_refused_index_check_is_an_error_not_an_unpublished_version(status, monkeypatch):
    """A 401/403 (expired token, wrong secret) on the "already published?" check read as "not
    published yet", so the step went on to upload, or reported a version as new."""
    refusing = type("Refusing", (_Recorder,), {"seen": [], "do_GET": lambda self: (
        self.send_response(status), self.end_headers())})
    server, url = _serve(refusing)
    monkeypatch.setenv("TWINE_USERNAME", "aws")
    monkeypatch.setenv("TWINE_PASSWORD", "expired")
    try:
        with pytest.raises(packaging.PublishError, match=f"HTTP {status} .*cannot tell whether this version is "
                                                         "published"):
            packaging.already_on_server(url + "/", "movierec-1.0-py3-none-any.whl")
    finally:
        server.shutdown()


CODEARTIFACT_URL = "https://ml-models-123456789012.d.codeartifact.eu-west-1.amazonaws.com/pypi/recommenders/"


def test_codeartifact_repositories_are_recognised_by_their_endpoint():
    assert packaging.codeartifact_repository(CODEARTIFACT_URL) == {
        "domain": "ml-models", "owner": "123456789012", "region": "eu-west-1"}
    assert packaging.codeartifact_repository(
        "https://acme-210987654321.d.codeartifact.cn-north-1.amazonaws.com.cn/pypi/x/") == {
        "domain": "acme", "owner": "210987654321", "region": "cn-north-1"}
    for other in ("https://pypi.example/movierec/", "http://127.0.0.1:8080/",
                  "https://ml-models-1234.d.codeartifact.eu-west-1.amazonaws.com/pypi/r/",  # no 12-digit account
                  "https://ml-models-123456789012.d.codeartifact.eu-west-1.amazonaws.com.evil.example/pypi/r/"):
        assert packaging.codeartifact_repository(other) is None, other


class _CodeArtifact(http.server.BaseHTTPRequestHandler):
    """A stand-in for CodeArtifact on loopback: GetAuthorizationToken (``POST /v1/authorization-token``,
    as boto3 sends it) and a PyPI repository under ``/pypi/recommenders/`` that takes only the token
    it handed out (Basic ``aws:<token>``), as CodeArtifact does: twine uploads, the simple index
    with each file's sha256, the files."""

    token = "ca-token-0001"
    tokens_asked: list = []
    files: dict = {}

    def _authorized(self) -> bool:
        expected = "Basic " + base64.b64encode(f"aws:{self.token}".encode()).decode()
        if self.headers.get("Authorization") == expected:
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="codeartifact"')
        self.end_headers()
        return False

    def _answer(self, body: bytes, content_type: str = "text/html") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        import email
        import json
        import urllib.parse

        body = self.rfile.read(int(self.headers["Content-Length"]))
        path, _, query = self.path.partition("?")
        if path == "/v1/authorization-token":
            type(self).tokens_asked.append({"query": urllib.parse.parse_qs(query),
                                            "signed": self.headers.get("Authorization", "")})
            return self._answer(json.dumps({"authorizationToken": self.token, "expiration": 1900000000}).encode(),
                                "application/json")
        if path != "/pypi/recommenders/" or not self._authorized():
            return None if path == "/pypi/recommenders/" else self.send_error(404)
        form = email.message_from_bytes(f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
        for part in form.get_payload():
            if part.get_param("name", header="content-disposition") == "content":
                type(self).files[part.get_filename()] = part.get_payload(decode=True)
        self._answer(b"OK")

    def do_GET(self):  # noqa: N802
        if not self._authorized():
            return
        if self.path == "/pypi/recommenders/simple/movierec/":
            if not self.files:
                return self.send_error(404)
            links = "".join(f'<a href="../../files/{n}#sha256={hashlib.sha256(d).hexdigest()}">{n}</a>'
                            for n, d in self.files.items())
            return self._answer(links.encode())
        name = self.path.removeprefix("/pypi/recommenders/files/")
        return self._answer(self.files[name], "application/octet-stream") if name in self.files else \
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_codeartifact_credentials_come_from_the_machines_own_aws_role(wheel, monkeypatch, tmp_path):
    """A deployed flow had no TWINE_* in its pods, and a static CodeArtifact token lives 12 h at
    most: with none set, publish asks CodeArtifact for a token with its own AWS credentials (the
    pod's role), as `aws codeartifact login --tool twine` does, and uploads with it; the stand-in
    takes only that token."""
    stand_in = type("StandIn", (_CodeArtifact,), {"tokens_asked": [], "files": {}})
    server, url = _serve(stand_in)
    for name in ("TWINE_USERNAME", "TWINE_PASSWORD", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPODROLE000000001")  # what a pod's role hands boto3
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pod-role-secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_CODEARTIFACT", url)
    try:
        credentials = packaging.repository_credentials(CODEARTIFACT_URL)
        assert credentials == {"TWINE_USERNAME": "aws", "TWINE_PASSWORD": "ca-token-0001"}
        (asked,) = stand_in.tokens_asked
        assert asked["query"] == {"domain": ["ml-models"], "domain-owner": ["123456789012"], "duration": ["3600"]}
        assert asked["signed"].startswith("AWS4-HMAC-SHA256 Credential=AKIAPODROLE000000001/")
        assert "/eu-west-1/codeartifact/aws4_request" in asked["signed"]

        repository = url + "/pypi/recommenders/"
        with pytest.raises(packaging.PublishError, match="HTTP 401 .*credentials were refused"):
            packaging.upload(wheel, repository, {"TWINE_USERNAME": "aws", "TWINE_PASSWORD": "yesterdays-token"})
        assert packaging.upload(wheel, repository, credentials) is True
        assert stand_in.files == {wheel.name: wheel.read_bytes()}
        assert packaging.upload(wheel, repository, credentials) is False  # listed now: not uploaded again
        copy = packaging.published_copy(wheel.name, repository, tmp_path, tmp_path, credentials)
        assert copy.read_bytes() == wheel.read_bytes()
    finally:
        server.shutdown()

    # Set variables (a shell, CI, or the publish step's @secrets source) come first; no CodeArtifact call then.
    monkeypatch.setenv("TWINE_USERNAME", "ci")
    monkeypatch.setenv("TWINE_PASSWORD", "from-a-secret")
    assert packaging.repository_credentials(CODEARTIFACT_URL) == {"TWINE_USERNAME": "ci",
                                                                  "TWINE_PASSWORD": "from-a-secret"}
    assert len(stand_in.tokens_asked) == 1
    monkeypatch.delenv("TWINE_PASSWORD")
    assert packaging.repository_credentials("https://pypi.example/movierec/") == {}


def test_a_codeartifact_token_that_cannot_be_had_says_what_to_give_the_step(monkeypatch, tmp_path):
    refusing = type("Refusing", (_Recorder,), {"seen": [], "do_POST": lambda self: (
        self.send_response(403), self.send_header("Content-Length", "2"), self.end_headers(), self.wfile.write(b"{}"))})
    server, url = _serve(refusing)
    for name in ("TWINE_USERNAME", "TWINE_PASSWORD", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPODROLE000000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pod-role-secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_CODEARTIFACT", url)
    try:
        with pytest.raises(packaging.PublishError, match=r"no CodeArtifact token for domain ml-models \(account "
                                                         r"123456789012, eu-west-1\) .*codeartifact:GetAuthorization"):
            packaging.repository_credentials(CODEARTIFACT_URL)
    finally:
        server.shutdown()


@pytest.mark.integration  # starts a pypiserver process
def test_a_pypiserver_that_cannot_start_says_why():
    """Its stderr went to /dev/null: a port in use read "did not answer within 30s", 30 s later."""
    import socket
    import time

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        started = time.monotonic()
        with pytest.raises(packaging.PublishError, match="(?s)exited with code 1:.*Address already in use"):
            with packaging.LocalPypiServer(Path(tempfile.gettempdir()), port=busy.getsockname()[1]):
                pass
    assert time.monotonic() - started < 20


def test_concurrent_index_rewrites_do_not_share_a_temporary_file(tmp_path):
    """Both pages were written through one `index.tmp`: two publishers into one index wrote into
    each other's file and renamed it from under each other (FileNotFoundError, or a torn page)."""
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "packages").mkdir()
    for i in range(30):
        (tmp_path / "packages" / f"movierec-1.0.post{i}-py3-none-any.whl").write_bytes(b"x" * 1000 * i)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: packaging.write_simple_index(tmp_path), range(200)))
    page = (tmp_path / "simple" / "movierec" / "index.html").read_text()
    assert page.count("<a href=") == 30 and page.endswith("</body></html>\n")
    assert sorted(p.name for p in (tmp_path / "simple").rglob("*")) == ["index.html", "index.html", "movierec"]


@pytest.mark.parametrize("scheme", ["file", "ftp", "http-elsewhere"])
def test_an_index_link_urllib_would_open_but_is_not_https_is_not_the_published_copy(scheme, tmp_path):
    """A link was followed with urllib's default opener: a ``file:`` link with the sha256 of a file
    on this machine made that file the published copy (and the install command's); ``ftp:`` and
    plain http to another host went unencrypted."""
    wheel = b"PK\x03\x04 a file on the publishing machine"
    digest = hashlib.sha256(wheel).hexdigest()
    local = tmp_path / "movierec-1.0-py3-none-any.whl"
    local.write_bytes(wheel)
    href = {"file": local.as_uri(), "ftp": "ftp://127.0.0.1/movierec-1.0-py3-none-any.whl",
            "http-elsewhere": "http://example.com/movierec-1.0-py3-none-any.whl"}[scheme]
    index_server, index_url = _serve(_link_page(f"{href}#sha256={digest}"))
    try:
        with pytest.raises(packaging.PublishError, match=r"not fetched: .* must be https:// \(plain http only on"):
            packaging.published_copy(local.name, index_url + "/", tmp_path, tmp_path / "out", credentials={})
    finally:
        index_server.shutdown()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("announced", [True, False])
def test_a_download_past_the_cap_is_refused_not_read_into_memory(announced, tmp_path, monkeypatch):
    """An index or wheel was read whole, however much the server sent. Over the cap: refused at
    its Content-Length, or (sent without one, chunked) once it has read one byte more."""
    monkeypatch.setattr(packaging, "MAX_DOWNLOAD", 1000)
    wheel = b"PK\x03\x04" + b"x" * 1500
    files = _file_server(wheel)
    if not announced:
        class Chunked(files):  # Transfer-Encoding: chunked, no Content-Length
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(wheel), 500):
                    piece = wheel[start:start + 500]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
        files = Chunked
    files_server, files_url = _serve(files)
    name = "movierec-1.0-py3-none-any.whl"
    index_server, index_url = _serve(_link_page(f"{files_url}/{name}#sha256={hashlib.sha256(wheel).hexdigest()}"))
    try:
        with pytest.raises(packaging.PublishError, match=r"larger than 1,000 bytes \(packaging.MAX_DOWNLOAD\)"):
            packaging.published_copy(name, index_url + "/", tmp_path, tmp_path / "out", credentials={})
        monkeypatch.setattr(packaging, "MAX_DOWNLOAD", len(wheel))  # exactly the cap: taken
        assert packaging.published_copy(name, index_url + "/", tmp_path, tmp_path / "out", credentials={}
                                        ).read_bytes() == wheel
    finally:
        files_server.shutdown()
        index_server.shutdown()
