"""Publishing: a wheel of the ``movierec`` code plus a trained bundle, uploaded with twine.

The wheel is built with ``python -m build`` from a staging copy of the package (the repository
is never modified), checked with ``twine check``, and uploaded:

- to ``repository_url`` (any PyPI-compatible server, CodeArtifact included; https, or http on
  loopback only), or by default
- to a local PEP 503 index folder. twine needs a server to talk to, so a pypiserver is started on
  loopback over an empty incoming folder for the upload; the received file is checked against the
  built one, then moved into ``packages/`` and the static ``simple/`` pages are rewritten.

Publishing is atomic (a failure leaves the index as it was) and idempotent (a version already
in the index is not uploaded again).

Credentials for a repository (:func:`repository_credentials`), never in the URL, which Metaflow
stores and prints: ``TWINE_USERNAME``/``TWINE_PASSWORD`` when both are set (a shell, CI, or a
``@secrets`` source that ``deploy.publish_secret`` gives the publish step); otherwise, for a
CodeArtifact repository, a token that this process gets with its own AWS credentials (a pod's or
Batch job's role), as ``aws codeartifact login --tool twine`` does: a token lives at most 12 h, so
a static one cannot serve a weekly schedule. They go to the repository's own origin only (https,
or loopback), never to a host its index links to.

The install command it prints never lets another index supply ``movierec`` (dependency
confusion: the name is not ours on PyPI, and pip takes the highest version from any index it is
given): it names the wheel file itself, by URL and sha256, in the local index or as the
repository's simple index lists it.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import movierec
from movierec.core.checksums import sha256
from movierec.core.settings import PublishSettings, fetch_url_problem, redact_url, repository_url_problem
from movierec.errors import BundleError
from movierec.serving.bundle import KNOWN_FILES, bundle_of_run, read_bundle

SOURCE_ROOT = Path(movierec.__file__).resolve().parent.parent
DEFAULT_INDEX_DIR = SOURCE_ROOT / "dist" / "pypi"
PROJECT = "movierec"
# A CodeArtifact repository's endpoint host: <domain>-<owner account>.d.codeartifact.<region>.amazonaws.com
CODEARTIFACT_HOST = re.compile(r"(?P<domain>[a-z][a-z0-9-]*[a-z0-9])-(?P<owner>\d{12})\.d\.codeartifact\."
                               r"(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")
# How long a CodeArtifact token asked for here lives: one publish (build, check, upload) takes minutes.
TOKEN_SECONDS = 3600
# The most bytes read from a repository in one answer (its index page, or a published wheel: the
# code, the models and their per-user data): a server answering without end does not fill the memory.
MAX_DOWNLOAD = 512 * 2**20


class PublishError(RuntimeError):
    pass


@dataclass
class Publication:
    version: str
    wheel: str
    sha256: str
    size: int
    repository: str
    install_command: str
    uploaded: bool  # False when this version was already there (idempotent re-run)

    def to_dict(self) -> dict:
        return asdict(self)


def run_version(run_id: str, started_us: int | None = None, base: str = movierec.__version__) -> str:
    """PEP 440 version of a run's wheel: ``<base>.post<N>`` (no local ``+`` part, so any index
    accepts it, and pip installs it without ``--pre``), N the microsecond the run started
    (``started_us``, which the ``start`` step records). Later runs are newer wherever they ran:
    Metaflow's local run ids are that same timestamp, but Argo's and Step Functions' are names
    and a metadata service counts from 1, which hashed or counted to versions that sorted in random
    order, or below every local run. Bundles from before ``started_us`` fall back to the run id
    (a number as is, a name hashed)."""
    if started_us is not None:
        number = started_us
    else:
        number = int(run_id) if run_id.isdigit() else int(sha256(run_id.encode())[:12], 16)
    return f"{base}.post{int(number)}"


def bundle_version(bundle: bytes) -> str:
    """The version a bundle is published as, from the run metadata in its model.json."""
    info, _ = read_bundle(bundle)
    return run_version(str(info["run_id"]), info.get("started_us"))


def _run(cmd: list[str], what: str, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise PublishError(f"{what} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr).strip()[-3000:]}")
    return proc.stdout


def build_wheel(bundle: bytes, version: str, out_dir: Path, source_root: Path = SOURCE_ROOT) -> Path:
    """Build ``movierec-<version>-py3-none-any.whl`` with the bundle inside ``movierec/bundle/``.
    The bundle is checked as serving will load it first: a bundle of an older format (an earlier
    run published again) or a damaged one fails here, not in every installation."""
    try:
        read_bundle(bundle)
    except BundleError as exc:
        raise PublishError(f"not publishing: {exc}") from None
    for required in ("setup.cfg", "pyproject.toml", "README.md", "movierec/__init__.py"):
        if not (source_root / required).is_file():
            raise PublishError(f"{source_root}: {required} missing; publish from a movierec source checkout or "
                               "the flow's code package")
    with tempfile.TemporaryDirectory(prefix="movierec-build-") as tmp:
        stage = Path(tmp) / "src"
        shutil.copytree(source_root / "movierec", stage / "movierec",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "bundle"))
        for name in ("setup.cfg", "pyproject.toml", "README.md"):
            shutil.copy2(source_root / name, stage / name)
        init = stage / "movierec" / "__init__.py"
        text = init.read_text()
        if f'__version__ = "{movierec.__version__}"' not in text:
            raise PublishError(f"{init}: no __version__ line to stamp")
        init.write_text(text.replace(f'__version__ = "{movierec.__version__}"', f'__version__ = "{version}"'))
        bundle_dir = stage / "movierec" / "bundle"
        bundle_dir.mkdir()
        with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
            for name in KNOWN_FILES:
                if name in zf.namelist():
                    (bundle_dir / name).write_bytes(zf.read(name))
        built = Path(tmp) / "dist"
        print(f"[publish] building movierec {version} ...", flush=True)
        _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(built), str(stage)],
             "python -m build")
        wheels = list(built.glob("*.whl"))
        if len(wheels) != 1:
            raise PublishError(f"python -m build produced {len(wheels)} wheels, expected 1")
        _run([sys.executable, "-m", "twine", "check", "--strict", str(wheels[0])], "twine check")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / wheels[0].name
        shutil.copy2(wheels[0], target)
        return target


def _twine_upload(wheel: Path, url: str, env: dict[str, str]) -> None:
    _run([sys.executable, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar",
          "--repository-url", url, str(wheel)], f"twine upload to {url}", env=env)


def check_repository_url(url: str) -> str:
    """``url`` if it is fit to upload to (``movierec.core.settings.repository_url_problem``), else PublishError."""
    if not url or (why := repository_url_problem(url)) is not None:
        raise PublishError(f"the repository URL {why or 'is empty'}")
    return url


def simple_url(repository_url: str) -> str:
    """The PEP 503 index beside an upload URL (``.../legacy/`` on PyPI-like servers)."""
    return repository_url.rstrip("/").removesuffix("/legacy") + "/simple/"


def codeartifact_repository(repository_url: str) -> dict[str, str] | None:
    """``{"domain", "owner", "region"}`` of a CodeArtifact repository endpoint
    (``https://<domain>-<owner>.d.codeartifact.<region>.amazonaws.com/pypi/<repository>/``), or
    None for any other server."""
    parts = urllib.parse.urlsplit(repository_url)
    found = CODEARTIFACT_HOST.fullmatch(parts.hostname or "") if parts.scheme == "https" else None
    return found.groupdict() if found else None


def codeartifact_token(domain: str, owner: str, region: str) -> str:
    """A CodeArtifact authorization token for ``domain`` (of account ``owner``), got with this
    process's own AWS credentials (boto3's chain: a pod's or Batch job's role, an instance
    profile, the AWS_* variables), as ``aws codeartifact login --tool twine`` gets one."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = boto3.client("codeartifact", region_name=region).get_authorization_token(
            domain=domain, domainOwner=owner, durationSeconds=TOKEN_SECONDS)
    except (BotoCoreError, ClientError) as exc:
        raise PublishError(f"no CodeArtifact token for domain {domain} (account {owner}, {region}) with this "
                           f"machine's AWS credentials: {exc}. Give the publish step a role allowed "
                           "codeartifact:GetAuthorizationToken and sts:GetServiceBearerToken, or set "
                           "TWINE_USERNAME/TWINE_PASSWORD (deploy.publish_secret)") from None
    return answer["authorizationToken"]


def repository_credentials(repository_url: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``{"TWINE_USERNAME", "TWINE_PASSWORD"}`` for ``repository_url``: both variables of
    ``environ`` (default os.environ) when set; else, for a CodeArtifact repository, ``aws`` and a
    token from :func:`codeartifact_token`; else none (a server that takes anonymous uploads)."""
    environ = os.environ if environ is None else environ
    user, password = environ.get("TWINE_USERNAME"), environ.get("TWINE_PASSWORD")
    if user and password:
        return {"TWINE_USERNAME": user, "TWINE_PASSWORD": password}
    if (codeartifact := codeartifact_repository(repository_url)) is not None:
        return {"TWINE_USERNAME": "aws", "TWINE_PASSWORD": codeartifact_token(**codeartifact)}
    return {}


def upload(wheel: Path, repository_url: str, credentials: dict[str, str] | None = None) -> bool:
    """twine-upload ``wheel`` to a server unless it already has it; True if uploaded.
    ``credentials``: :func:`repository_credentials` (by default got here)."""
    check_repository_url(repository_url)
    credentials = repository_credentials(repository_url) if credentials is None else credentials
    if already_on_server(repository_url, wheel.name, credentials):
        return False
    env = {k: v for k, v in os.environ.items() if k not in ("TWINE_USERNAME", "TWINE_PASSWORD")}
    _twine_upload(wheel, repository_url, {**env, **credentials})
    return True


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib keeps an Authorization header across a redirect to another host; don't follow any."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0917 (urllib calls it so)
        raise PublishError(f"{req.full_url} redirected ({code}) to {newurl}: not followed, so the credentials "
                           "stay with the repository they are for; give the final URL as --repository-url")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or {"https": 443, "http": 80}.get(parts.scheme)


def _get(url: str, repository_url: str, credentials: dict[str, str], timeout: float) -> bytes:
    """GET ``url``, following no redirect, with ``credentials`` as basic auth only when ``url`` is
    on the repository's own origin (scheme, host and port), which ``check_repository_url`` holds
    to https or loopback: an index may link its files on another host, or over plain http.
    Only https, or http on loopback (``fetch_url_problem``): an index's link may name anything
    urllib opens, and a ``file:`` link with the sha256 of a file on this machine made that file
    the published copy. At most ``MAX_DOWNLOAD`` bytes are read."""
    shown = redact_url(url)
    if (why := fetch_url_problem(url)) is not None:
        raise PublishError(f"not fetched: {shown} {why}")
    request = urllib.request.Request(url)
    if credentials and _origin(url) == _origin(repository_url) and repository_url_problem(url) is None:
        token = base64.b64encode(f"{credentials['TWINE_USERNAME']}:{credentials['TWINE_PASSWORD']}".encode())
        request.add_header("Authorization", f"Basic {token.decode()}")
    too_large = PublishError(f"{shown}: larger than {MAX_DOWNLOAD:,} bytes (packaging.MAX_DOWNLOAD); not read")
    with urllib.request.build_opener(_NoRedirects).open(request, timeout=timeout) as resp:
        if (resp.length or 0) > MAX_DOWNLOAD:  # the Content-Length it announces
            raise too_large
        data = resp.read(MAX_DOWNLOAD + 1)
    if len(data) > MAX_DOWNLOAD:
        raise too_large
    return data


def _published_links(repository_url: str, credentials: dict[str, str]) -> dict[str, str]:
    """{file name: absolute URL, with its ``#sha256=`` when the index gives one} of the movierec
    files on the repository's simple index page (empty when it has none yet: 404). Any other
    answer is an error: a 401 or 403 (credentials refused or expired) says nothing about what is
    published, and taking it for "not yet" would upload again, or fail there less clearly."""
    page = f"{simple_url(repository_url)}{PROJECT}/"
    try:
        text = _get(page, repository_url, credentials, timeout=30).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        hint = (" (the credentials were refused: check TWINE_USERNAME/TWINE_PASSWORD, deploy.publish_secret, or "
                "the role's CodeArtifact permissions)" if exc.code in (401, 403) else "")
        raise PublishError(f"{page}: HTTP {exc.code} {exc.reason}{hint}; cannot tell whether this version is "
                           "published") from None
    except OSError as exc:
        raise PublishError(f"{page}: unreachable ({exc}); cannot tell whether this version is published") from None
    links = {}
    for href in re.findall(r'href="([^"]+)"', text):
        try:
            url, _, fragment = urllib.parse.urljoin(page, html.unescape(href)).partition("#")
        except ValueError:  # not a URL (an unclosed [IPv6 bracket): a link nothing could follow
            continue
        links[urllib.parse.unquote(url.rsplit("/", 1)[-1])] = url + (f"#{fragment}" if fragment.startswith(
            "sha256=") else "")
    return links


def already_on_server(repository_url: str, wheel_name: str, credentials: dict[str, str] | None = None) -> bool:
    """Whether the server's simple index already lists ``wheel_name`` (twine's --skip-existing
    works with PyPI only). ``credentials``: :func:`repository_credentials` (by default got here)."""
    credentials = repository_credentials(repository_url) if credentials is None else credentials
    return wheel_name in _published_links(repository_url, credentials)


def published_copy(wheel_name: str, repository_url: str, index_dir: Path, out_dir: Path,
                   credentials: dict[str, str] | None = None) -> Path:
    """The wheel of that name already published (in the local index, or downloaded from the
    repository into ``out_dir``), so that what a re-publish reports and the install command it
    prints name that file: a rebuild of the same version (a retried publish step, or ``--run``
    again) is not byte-identical, and pip refuses a hash that is not the server's. A download
    counts only when it has the sha256 the repository's index lists for it."""
    if not repository_url:
        return index_dir / "packages" / wheel_name
    credentials = repository_credentials(repository_url) if credentials is None else credentials
    link = _published_links(repository_url, credentials)[wheel_name]
    url, _, fragment = link.partition("#")
    if not fragment.startswith("sha256="):
        raise PublishError(f"{simple_url(repository_url)}{PROJECT}/ lists {wheel_name} without a #sha256=: the "
                           "published copy cannot be checked, so it is not taken for this version's wheel")
    data = _get(url, repository_url, credentials, timeout=60)
    if sha256(data) != fragment.removeprefix("sha256="):
        raise PublishError(f"{url}: the download does not match the sha256 its index lists")
    target = out_dir / "published" / wheel_name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(url: str, proc: subprocess.Popen, log: IO[bytes], timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 200; if ``proc`` exits first, or after ``timeout`` seconds,
    raise with the end of what it wrote to ``log`` (why it did not start: a port in use, ...)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        exited = proc.poll() is not None
        if exited or time.monotonic() > deadline:
            log.seek(0)
            said = log.read().decode(errors="replace").strip()[-2000:] or "(nothing on stderr)"
            what = f"exited with code {proc.returncode}" if exited else f"did not answer within {timeout:.0f}s"
            raise PublishError(f"pypiserver at {url} {what}:\n{said}")
        time.sleep(0.2)


class LocalPypiServer:
    """pypiserver on loopback over ``packages``, uploads allowed without authentication; its
    stderr is kept, and shown when it fails to start."""

    def __init__(self, packages: Path, port: int | None = None):
        self.packages, self.port = packages, port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> LocalPypiServer:
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pypiserver", "run", "-i", "127.0.0.1", "-p", str(self.port), "-a", ".", "-P", ".",
             "--disable-fallback", "--log-stream", "none", str(self.packages)],
            stdout=subprocess.DEVNULL, stderr=self._log)
        try:
            _wait_until_serving(self.url + "/health", self._proc, self._log)
        except PublishError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._log:
            self._log.close()


def write_simple_index(index_dir: Path) -> None:
    """Rewrite the static PEP 503 pages for every wheel in ``packages/``, each page atomically
    through a temporary file of its own: two publishers sharing one name wrote into each other's
    page and renamed it away from under the other."""
    packages = sorted((index_dir / "packages").glob(f"{PROJECT}-*.whl"))
    links = "\n".join(
        f'<a href="../../packages/{html.escape(p.name)}#sha256={sha256(p)}">{html.escape(p.name)}</a><br>'
        for p in packages
    )
    pages = {
        index_dir / "simple" / "index.html": f'<!DOCTYPE html><html><body><a href="{PROJECT}/">{PROJECT}</a>'
                                               "</body></html>\n",
        index_dir / "simple" / PROJECT / "index.html": f"<!DOCTYPE html><html><body>\n{links}\n</body></html>\n",
    }
    for path, text in pages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the page from a web server serving the folder
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def publish_to_directory(wheel: Path, index_dir: Path) -> bool:
    """Upload ``wheel`` with twine into the local index at ``index_dir``; False if already there."""
    packages = index_dir / "packages"
    packages.mkdir(parents=True, exist_ok=True)
    if (packages / wheel.name).exists():
        write_simple_index(index_dir)
        return False
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=index_dir))
    try:
        with LocalPypiServer(incoming) as server:
            env = {**os.environ, "TWINE_USERNAME": "movierec", "TWINE_PASSWORD": "local"}
            _twine_upload(wheel, server.url + "/", env)
        received = incoming / wheel.name
        if not received.is_file() or sha256(received) != sha256(wheel):
            raise PublishError(f"{received}: upload did not arrive intact")
        os.replace(received, packages / wheel.name)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    write_simple_index(index_dir)
    return True


def install_command(version: str, wheel: Path, repository_url: str = "", index_dir: Path | None = None,
                    credentials: dict[str, str] | None = None) -> str:
    """The pip command that installs exactly this release and cannot take ``movierec`` from any
    other index (see the module docstring): the wheel itself by URL and sha256 (pip checks the
    ``#sha256=`` of a direct reference), as the repository's simple index lists it or in the
    local index's folder. Only if a repository does not list it (yet) does the command fall back
    to that repository as the sole index, pinned to the version. ``credentials``:
    :func:`repository_credentials` (by default got here)."""
    if repository_url:
        credentials = repository_credentials(repository_url) if credentials is None else credentials
        url = _published_links(repository_url, credentials).get(wheel.name)
        if url is None:
            return f"pip install --isolated --index-url {simple_url(repository_url)} {PROJECT}=={version}"
        url = url.partition("#")[0]
    else:
        url = (Path(index_dir).resolve() / "packages" / wheel.name).as_uri()
    return f"pip install '{PROJECT} @ {url}#sha256={sha256(wheel)}'"


def publish(bundle: bytes, settings: PublishSettings) -> Publication:
    """Build the run's wheel (its version from the bundle's run, :func:`bundle_version`) and upload
    it to ``settings.repository_url`` (its credentials got once: :func:`repository_credentials`),
    or else the local index ``settings.index_dir`` (default ``dist/pypi`` beside the source);
    returns what was published, which names the wheel where it now lies (no caller keeps its
    bytes: the flow stores none). The build happens in a temporary folder that is gone when this
    returns, whatever happens."""
    try:
        version = bundle_version(bundle)
    except BundleError as exc:
        raise PublishError(f"not publishing: {exc}") from None
    repository_url = settings.repository_url
    index_dir = Path(settings.index_dir or DEFAULT_INDEX_DIR)
    credentials = repository_credentials(check_repository_url(repository_url)) if repository_url else {}
    with tempfile.TemporaryDirectory(prefix="movierec-wheel-") as out_dir:
        wheel = build_wheel(bundle, version, Path(out_dir))
        if repository_url:
            uploaded, where = upload(wheel, repository_url, credentials), repository_url
        else:
            index_dir = Path(index_dir).resolve()
            uploaded, where = publish_to_directory(wheel, index_dir), str(index_dir)
        if not uploaded:
            wheel = published_copy(wheel.name, repository_url, index_dir, Path(out_dir), credentials)
        install = install_command(version, wheel, repository_url, index_dir, credentials)
        print(f"[publish] movierec {version} {'uploaded to' if uploaded else 'already in'} {where}", flush=True)
        blob = wheel.read_bytes()
    return Publication(version=version, wheel=wheel.name, sha256=sha256(blob), size=len(blob), repository=where,
                       install_command=install, uploaded=uploaded)


def main(argv: list[str] | None = None) -> int:
    """``python -m movierec.training.packaging --run RecommenderFlow/<id>``: publish an earlier run's model
    (e.g. from CI, after choosing a run), without re-running the flow."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m movierec.training.packaging", description=main.__doc__)
    parser.add_argument("--run", required=True, help="Metaflow run: RecommenderFlow/<run id> or a run id")
    parser.add_argument("--repository-url", default="", help="upload here with twine (credentials: TWINE_USERNAME/"
                        "TWINE_PASSWORD, or for CodeArtifact a token got with this machine's AWS credentials)")
    parser.add_argument("--index-dir", default="", help=f"local index otherwise (default {DEFAULT_INDEX_DIR})")
    args = parser.parse_args(argv)
    try:
        _, bundle = bundle_of_run(args.run)
        publication = publish(bundle, PublishSettings(repository_url=args.repository_url, index_dir=args.index_dir))
    except (PublishError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(publication.install_command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
