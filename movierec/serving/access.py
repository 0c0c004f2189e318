"""Who may do what through the REST API: API keys, their scopes, a per-key write rate, and the
Host names the server answers to.

Writes (``POST /ratings``) need a key, sent as ``Authorization: Bearer <key>``; reads are open
unless the server requires a key for them too (``movierec serve --read-key-required``). A key is
scoped to the users it may write for (``--users 1-100``: an app that rates for its own users) or
to any user (``--backend``: a trusted backend); a key never reads more than any other key does.
``movierec keys add`` prints a key once; the keys file keeps only its SHA-256 (a key is 256
random bits, so a hash needs no salt or stretching), is written with mode 0600 and replaced whole
(never half-written), and a running server re-reads it within a second of a change, so a revoked
key stops working without a restart; a server refuses a keys file group or others may write
(they could add a key). Presented keys are compared in constant time
(``hmac.compare_digest``). The part of a key before its secret (``mr_<id>``) is its public id:
the interaction store records it with each rating the key wrote.

The Host check refuses a request whose ``Host`` header names no allowed host (400): a web page
from another site that makes a browser resolve its own name to this server (DNS rebinding)
sends that name, so it cannot reach the API through the browser of someone on this machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import json
import math
import os
import re
import secrets
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from movierec.core.ids import MAX_ID

if TYPE_CHECKING:  # `movierec keys` runs without the serve extra
    from starlette.types import ASGIApp, Receive, Scope, Send

KEYS_FILE = "movierec-keys.json"  # in the working directory, as the store's default file is
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WRITE_RATE = 10.0  # writes per second per key, unless the key has its own rate
PREFIX = "mr_"
ID_HEX = 12  # a key is mr_<12 hex digits>_<secret>
REFRESH_S = 1.0  # how often a server looks at the keys file for a change


class AccessError(ValueError):
    """A keys file that cannot be read or written, a key that cannot be made or revoked as asked,
    or an access setting that makes no sense."""


def allowed_host(text: str) -> str:
    """An ``--allowed-hosts`` entry as the Host check compares it (lower case, no trailing dot):
    a name, an address (IPv6 without brackets), ``*.domain``, or ``*`` (any host). Refused, as
    they would never match (or match more than meant): a port, brackets, a ``*`` elsewhere than
    a leading ``*.``, and ``*.`` without a domain."""
    host = text.strip().lower()
    if host == "*":
        return host
    name = host.removeprefix("*.").removesuffix(".")
    why = None
    if "[" in name or "]" in name:
        why = "no brackets (an IPv6 address is written bare, e.g. ::1)"
    elif "*" in name:
        why = "'*' only as a whole entry or as a leading '*.' of a domain"
    elif ":" in name:
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            why = "no port (the Host check ignores the port a client sends)"
        else:
            why = "an address, not *.address" if host.startswith("*.") else None
    elif not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", name):
        why = "a name of letters, digits, '-' and '.'"
    if why is not None:
        raise AccessError(f"allowed host {text!r}: {why}; expected a name, an address, *.domain or *")
    return f"*.{name}" if host.startswith("*.") else name


def parse_users(text: str) -> tuple[tuple[int, int], ...]:
    """``"1-100,205"`` as inclusive ranges ((1, 100), (205, 205))."""
    ranges = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([0-9]{1,19})\s*(?:-\s*([0-9]{1,19})\s*)?", part)
        if not match:
            raise AccessError(f"users {text!r}: {part.strip()!r} is no user id or range; expected e.g. 1-100,205")
        low, high = int(match[1]), int(match[2] or match[1])
        if not low <= high <= MAX_ID:
            raise AccessError(f"users {text!r}: range {low}-{high} must go upwards, within 0-{MAX_ID}")
        ranges.append((low, high))
    return tuple(ranges)


@dataclass(frozen=True)
class Key:
    """One API key as the keys file keeps it: the hash of its secret, never the secret."""

    id: str
    sha256: str
    users: tuple[tuple[int, int], ...] = ()  # the users it may write for (inclusive ranges), unless backend
    backend: bool = False  # a trusted backend: may write for any user
    name: str = ""
    rate: float | None = None  # writes per second; None: the server's --write-rate
    created: int = 0
    revoked: int | None = None

    def active(self) -> bool:
        return self.revoked is None

    def may_write_for(self, user_id: int) -> bool:
        return self.backend or any(low <= user_id <= high for low, high in self.users)

    def scope(self) -> str:
        if self.backend:
            return "any user (backend)"
        return "users " + ",".join(str(low) if low == high else f"{low}-{high}" for low, high in self.users)

    @classmethod
    def from_json(cls, entry: dict) -> Key:
        return cls(**{**entry, "users": tuple(tuple(r) for r in entry.get("users", ()))})


def _digest(presented: str) -> str:
    return hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()


class KeyFile:
    """The keys file (JSON, mode 0600): what ``movierec keys`` edits and a server reads."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def keys(self) -> list[Key]:
        """Every key, revoked ones too (their ids stay explained); none when there is no file."""
        try:
            entries = json.loads(self.path.read_text())["keys"]
            return [Key.from_json(entry) for entry in entries]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AccessError(f"{self.path}: not a movierec keys file ({type(exc).__name__}: {exc})") from None

    def add(self, users: tuple[tuple[int, int], ...] = (), backend: bool = False, name: str = "",
            rate: float | None = None) -> tuple[Key, str]:
        """A new key for ``users`` (or any user: ``backend``): (the key as kept, its secret, which
        is nowhere else)."""
        if backend == bool(users):
            raise AccessError("a key is for some users (--users) or for a trusted backend (--backend), one of them")
        if rate is not None and not 0 < rate < math.inf:
            raise AccessError(f"rate {rate}: expected a positive number of writes per second")
        with self._locked() as keys:
            key_id = f"{PREFIX}{secrets.token_hex(ID_HEX // 2)}"
            secret = f"{key_id}_{secrets.token_urlsafe(32)}"
            key = Key(key_id, _digest(secret), users=users, backend=backend, name=name, rate=rate,
                      created=int(time.time()))
            keys.append(key)
        return key, secret

    def revoke(self, key_id: str) -> Key:
        """Mark the key revoked (kept in the file, so the ratings it wrote still name a known key).
        An unknown id changes nothing on disk: no file (or lock file) is created, none rewritten."""
        unknown = AccessError(f"{self.path}: no key {key_id!r} (movierec keys list shows them)")
        if not self.path.exists():
            raise unknown
        with self._locked() as keys:
            for n, key in enumerate(keys):
                if key.id == key_id:
                    if key.revoked is None:
                        keys[n] = Key(**{**asdict(key), "revoked": int(time.time())})
                    return keys[n]
            raise unknown  # inside the block: the file is not written back

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[Key]]:
        """The keys, to change in place; written back whole (a new file with mode 0600, renamed
        over the old one) when the block ends without an error. Two ``movierec keys`` at once wait
        for each other on a lock file beside it. The new file gets an unpredictable name, created
        exclusively (``mkstemp``): a link planted where it will be cannot redirect the write."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = self.keys()
            yield keys
            text = json.dumps({"keys": [asdict(k) for k in keys]}, indent=2) + "\n"
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            temporary = Path(name)
            try:
                os.fchmod(fd, 0o600)  # mkstemp's mode already; said here, as the file holds the keys
                with os.fdopen(fd, "w") as out:
                    out.write(text)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.path)
            finally:
                temporary.unlink(missing_ok=True)
        finally:
            os.close(lock)


class AccessDenied(Exception):
    """A request its key may not make: ``status`` 401 (no valid key), 403 (not for this user) or
    429 (over the key's write rate; ``retry_after`` seconds)."""

    def __init__(self, status: int, message: str, retry_after: float = 0.0):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after

    def headers(self) -> dict[str, str]:
        if self.status == 401:
            return {"WWW-Authenticate": "Bearer"}
        if self.status == 429:
            return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}
        return {}


@dataclass
class Access:
    """A server's access policy: its keys file, the Host names it answers to, whether reads
    need a key, and the default write rate per key. The keys file is re-read when it changes
    (looked at no more than once every ``REFRESH_S`` seconds); a file that turns unreadable
    leaves no key valid until it is fixed."""

    keys_file: str | Path | None = KEYS_FILE  # None: no keys, so no writes
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    read_key_required: bool = False
    write_rate: float = WRITE_RATE
    _keys: dict[str, Key] = field(default_factory=dict, init=False, repr=False)
    _seen: tuple | None = field(default=None, init=False, repr=False)
    _checked: float = field(default=-math.inf, init=False, repr=False)
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.write_rate < math.inf:
            raise AccessError(f"write rate {self.write_rate}: expected a positive number of writes per second")
        self.allowed_hosts = tuple(allowed_host(h) for h in self.allowed_hosts)
        self._refresh(strict=True)

    def _refresh(self, strict: bool = False) -> None:
        """Re-read the keys file if it changed (its contents or its mode); ``strict``: raise
        AccessError for a bad one (at start), instead of leaving no key valid, said once (while
        serving). Bad: unreadable (its folder, its permissions), not a keys file, or writable by
        group or others (whoever can write it can add a key)."""
        now = time.monotonic()
        if self.keys_file is None or now - self._checked < REFRESH_S:
            return
        self._checked = now
        file = KeyFile(self.keys_file)
        problem = None
        try:
            status = file.path.stat()
            seen: tuple | None = (status.st_mtime_ns, status.st_size, status.st_ino, status.st_mode)
            if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                problem = AccessError(f"{file.path}: writable by group or others (mode "
                                      f"{stat.S_IMODE(status.st_mode):04o}), so anyone of them could add a key; "
                                      f"chmod 600 {file.path}")
        except FileNotFoundError:
            seen = None
        except OSError as exc:
            seen = ("unreadable", exc.errno)  # the same failure again is not news
            problem = AccessError(f"{file.path}: cannot be read ({exc.strerror or exc})")
        if seen == self._seen and not strict:
            return
        try:
            if problem is not None:
                raise problem
            self._keys = {key.id: key for key in file.keys()}
        except AccessError as exc:
            if strict:
                raise
            print(f"movierec: {exc}; no key is valid until it is fixed", file=sys.stderr, flush=True)
            self._keys = {}
        self._seen = seen

    def active_keys(self) -> int:
        """How many keys (not revoked) the keys file holds now."""
        self._refresh()
        return sum(key.active() for key in self._keys.values())

    def host_allowed(self, host: str | None) -> bool:
        """Whether a Host header (``name``, ``name:port``, ``[v6 address]:port``) names an allowed host."""
        if host is None:
            return False
        name = host.strip().lower()
        if name.startswith("[") and "]" in name:  # [v6 address]:port
            name = name[1:name.index("]")]
        elif name.count(":") == 1:  # name:port
            name = name.partition(":")[0]
        name = name.rstrip(".")
        return any(allowed == "*" or name == allowed or (allowed.startswith("*.") and name.endswith(allowed[1:]))
                   for allowed in self.allowed_hosts)

    def authenticate(self, authorization: str) -> Key:
        """The key an ``Authorization: Bearer <key>`` header carries; AccessDenied (401) otherwise."""
        scheme, _, presented = authorization.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise AccessDenied(401, "the Authorization header must be 'Bearer <API key>'")
        self._refresh()
        key = self._keys.get(presented[:len(PREFIX) + ID_HEX])
        # constant time in the secret: a wrong guess learns nothing from how long the answer took
        if not hmac.compare_digest(_digest(presented), key.sha256 if key else "0" * 64) or key is None:
            raise AccessDenied(401, "unknown API key")
        if not key.active():
            raise AccessDenied(401, f"API key {key.id} was revoked")
        return key

    def authorize_write(self, key: Key | None, user_id: int) -> None:
        """Whether ``key`` may write a rating for ``user_id`` now: AccessDenied (401, 403, 429)
        if not; a write it may make takes one from its rate's budget (a token bucket holding
        up to one second of writes, at least one)."""
        key = _present(key)
        if not key.may_write_for(user_id):
            raise AccessDenied(403, f"API key {key.id} may write for {key.scope()}, not for user {user_id}")
        self._spend(key)

    def authorize_catalogue(self, key: Key | None) -> None:
        """Whether ``key`` may add a movie to the served catalogue now: a backend key only (a key
        scoped to some users writes their ratings, not what every user is recommended), within
        its write rate, as :meth:`authorize_write`."""
        key = _present(key)
        if not key.backend:
            raise AccessDenied(403, f"API key {key.id} may write for {key.scope()}; adding movies needs a backend "
                                    "key (movierec keys add --backend)")
        self._spend(key)

    def _spend(self, key: Key) -> None:
        """Take one write from ``key``'s budget, or refuse it (429, with the seconds to wait)."""
        rate = key.rate or self.write_rate
        now = time.monotonic()
        tokens, then = self._buckets.get(key.id, (max(rate, 1.0), now))
        tokens = min(max(rate, 1.0), tokens + (now - then) * rate)
        if tokens < 1.0:
            self._buckets[key.id] = (tokens, now)
            raise AccessDenied(429, f"API key {key.id} is over its {rate:g} writes per second", (1.0 - tokens) / rate)
        self._buckets[key.id] = (tokens - 1.0, now)


def _present(key: Key | None) -> Key:
    if key is None:
        raise AccessDenied(401, "writing needs an API key: send 'Authorization: Bearer <key>' "
                                "(the server's operator makes one with `movierec keys add`)")
    return key


SCOPE_KEY = "movierec.key"  # where AccessGuard leaves the request's key (a Key, or None) in the ASGI scope


class AccessGuard:
    """ASGI middleware in front of the API: refuses a request for a host not allowed (400)
    before anything else (but on ``any_host`` paths: a health check carries no data, and a load
    balancer's or Kubernetes' probe names the machine's own address), a request with a key that
    is not valid (401) and one without a key where one is needed (401: ``writes``, as (method,
    path); every path but ``open_paths`` when reads need one too); leaves the request's key for
    the handlers (``SCOPE_KEY``), which check what it may write. Refused requests' bodies are not
    read, so their connections close."""

    def __init__(self, app: ASGIApp, access: Access, writes: frozenset[tuple[str, str]],
                 open_paths: frozenset[str], any_host: frozenset[str] = frozenset()):
        self.app, self.access, self.writes, self.open_paths = app, access, writes, open_paths
        self.any_host = any_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = authorization = None
        for name, value in scope["headers"]:
            if name == b"host" and host is None:
                host = value.decode("latin-1")
            elif name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
        if scope["path"] not in self.any_host and not self.access.host_allowed(host):
            return await _refuse(send, 400, "this server does not answer to that Host header (movierec serve "
                                            "--allowed-hosts names the hosts it does)", {})
        key = None
        try:
            if authorization is not None:
                key = self.access.authenticate(authorization)
            elif (scope["method"], scope["path"]) in self.writes or (
                    self.access.read_key_required and scope["path"] not in self.open_paths):
                raise AccessDenied(401, f"{scope['method']} {scope['path']} needs an API key: send "
                                        "'Authorization: Bearer <key>'")
        except AccessDenied as exc:
            return await _refuse(send, exc.status, str(exc), exc.headers())
        scope[SCOPE_KEY] = key
        return await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, message: str, headers: dict[str, str]) -> None:
    """The API's JSON error, sent straight (the body was not read: the connection closes after it)."""
    body = json.dumps({"error": message}).encode()
    fields = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
              (b"connection", b"close"), *((k.lower().encode(), v.encode()) for k, v in headers.items())]
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})
