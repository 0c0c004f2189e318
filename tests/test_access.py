"""Who may write (and read) through the REST API: API keys kept hashed, scoped to users or to a
trusted backend, a write rate per key, and the Host names a server answers to; against real keys
files and a real `movierec serve` on loopback."""

import hashlib
import http.client
import json
import os
import re
import sqlite3
import stat
import time
import urllib.parse

import pytest
from conftest import call, serving

from movierec import cli
from movierec.serving.access import KEYS_FILE, Access, AccessDenied, AccessError, KeyFile, parse_users
from movierec.serving.recommender import Recommender


def _send(base: str, method: str, path: str, body: object = None, headers: dict | None = None
          ) -> tuple[int, dict, object]:
    """(status, headers (lower-case names), JSON answer or bytes) of a request with exactly
    these headers (``Host`` too)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        json_answer = response.getheader("Content-Type", "").startswith("application/json")
        answered = {name.lower(): value for name, value in response.getheaders()}
        return response.status, answered, json.loads(raw) if json_answer else raw
    finally:
        conn.close()


def test_keys_cli_prints_a_secret_once_and_keeps_only_its_hash(tmp_path, capsys):
    keys = tmp_path / "keys.json"
    assert cli.main(["keys", "--keys", str(keys), "add", "--users", "1-100,205", "--name", "app"]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret.startswith("mr_") and len(secret) == 3 + 12 + 1 + 43 and "users 1-100,205" in out.err
    text = keys.read_text()
    assert secret[16:] not in text and hashlib.sha256(secret.encode()).hexdigest() in text
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert cli.main(["keys", "--keys", str(keys), "add", "--backend", "--rate", "50"]) == 0
    backend = capsys.readouterr().out.strip()
    assert cli.main(["keys", "--keys", str(keys), "list"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("\tactive\t") == 2 and "any user (backend)\t50/s" in listed and "\tapp" in listed
    assert secret[16:] not in listed and backend[16:] not in listed
    assert cli.main(["keys", "--keys", str(keys), "revoke", secret[:15]]) == 0
    assert capsys.readouterr().err.startswith(f"movierec: key {secret[:15]} revoked")
    assert cli.main(["keys", "--keys", str(keys), "list"]) == 0 and "\trevoked\t" in capsys.readouterr().out
    assert cli.main(["keys", "--keys", str(keys), "revoke", "mr_000000000000"]) == 2
    assert "no key 'mr_000000000000'" in capsys.readouterr().err
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600 and len(KeyFile(keys).keys()) == 2


@pytest.mark.parametrize("args, words", [
    (["add", "--users", "5-1"], "must go upwards"),
    (["add", "--users", "1-x"], "no user id or range"),
    (["add", "--users", ""], "no user id or range"),
])
def test_bad_key_requests_are_refused_with_the_reason(tmp_path, capsys, args, words):
    keys = tmp_path / "keys.json"
    assert cli.main(["keys", "--keys", str(keys), *args]) == 2
    assert words in capsys.readouterr().err and not keys.exists()  # nothing written


def test_a_key_needs_exactly_one_scope_and_a_positive_rate(tmp_path, capsys):
    for args in (["add"], ["add", "--users", "1", "--backend"], ["add", "--backend", "--rate", "0"]):
        with pytest.raises(SystemExit) as exit_:
            cli.build_parser().parse_args(["keys", *args])
        assert exit_.value.code == 2
    with pytest.raises(AccessError, match="one of them"):
        KeyFile(tmp_path / "k.json").add(users=parse_users("1"), backend=True)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AccessError, match="not a movierec keys file"):
        Access(tmp_path / "bad.json")


def test_keys_are_checked_against_their_hash_and_scope(tmp_path):
    file = KeyFile(tmp_path / KEYS_FILE)
    key, secret = file.add(users=parse_users("1-100,205"))
    access = Access(file.path)
    assert access.authenticate(f"Bearer {secret}") == key and access.authenticate(f"bearer  {secret} ") == key
    for wrong in (secret[:-1] + ("A" if secret[-1] != "A" else "B"), secret[:16], "mr_", "x" * 60):
        with pytest.raises(AccessDenied, match="unknown API key") as denied:
            access.authenticate(f"Bearer {wrong}")
        assert denied.value.status == 401 and denied.value.headers() == {"WWW-Authenticate": "Bearer"}
    with pytest.raises(AccessDenied, match="Bearer <API key>"):
        access.authenticate(f"Basic {secret}")
    access.authorize_write(key, 205)
    with pytest.raises(AccessDenied, match="may write for users 1-100,205, not for user 101") as denied:
        access.authorize_write(key, 101)
    assert denied.value.status == 403
    with pytest.raises(AccessDenied, match="needs an API key") as denied:
        access.authorize_write(None, 1)
    assert denied.value.status == 401


def test_a_key_over_its_write_rate_waits(tmp_path):
    file = KeyFile(tmp_path / KEYS_FILE)
    slow, _ = file.add(users=parse_users("1"), rate=2)
    default, _ = file.add(backend=True)
    access = Access(file.path, write_rate=50)
    access.authorize_write(slow, 1)
    access.authorize_write(slow, 1)  # a burst of a second's worth
    with pytest.raises(AccessDenied, match="over its 2 writes per second") as denied:
        access.authorize_write(slow, 1)
    assert denied.value.status == 429 and 0 < denied.value.retry_after <= 0.5
    assert denied.value.headers() == {"Retry-After": "1"}
    for _ in range(50):  # another key has its own budget, the server's rate
        access.authorize_write(default, 7)
    with pytest.raises(AccessDenied):
        access.authorize_write(default, 7)
    time.sleep(0.55)
    access.authorize_write(slow, 1)


@pytest.mark.parametrize("host, allowed", [
    ("localhost", True), ("localhost:8000", True), ("127.0.0.1:8000", True), ("[::1]:8000", True),
    ("LOCALHOST.", True), ("api.example.com", True), ("a.b.example.com:443", True), ("example.com", False),
    ("evil.com", False), ("localhost.evil.com", False), ("127.0.0.1.nip.io", False), ("", False), (None, False),
])
def test_only_allowed_host_names_are_answered(host, allowed):
    access = Access(None, allowed_hosts=("localhost", "127.0.0.1", "::1", "api.example.com", "*.b.example.com"))
    assert access.host_allowed(host) is allowed
    assert Access(None, allowed_hosts=("*",)).host_allowed(host) is (host is not None)


@pytest.mark.parametrize("hosts", [("*example.com",), ("",), ("**",)])
def test_a_host_pattern_that_is_no_name_is_refused(hosts):
    with pytest.raises(AccessError, match="expected a name, an address, \\*.domain or \\*"):
        Access(None, allowed_hosts=hosts)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tiny_bundle, light_install):
    """A server with three keys: for users 1-3 (scoped), a backend one, and one of 1 write a second.
    (base URL, store file, keys file, {name: (Key, secret)}, the model)."""
    folder = tmp_path_factory.mktemp("access")
    file = KeyFile(folder / KEYS_FILE)
    keys = {"scoped": file.add(users=parse_users("1-3"), name="app"), "backend": file.add(backend=True),
            "slow": file.add(backend=True, rate=1)}
    with serving(light_install, tiny_bundle, folder) as (base, store):
        yield base, store, file, keys, Recommender.from_bytes(tiny_bundle)


def _rows(store) -> list[tuple]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT user_id, movie_id, rating, written_by FROM movierec_feedback "
                          "ORDER BY rowid").fetchall()  # as written


def test_writes_need_a_key_that_may_write_for_the_user(keyed):
    """Anyone who reached the API wrote ratings as any user; now: 401 without a valid key, 403
    for a user outside the key's scope, and each stored row names the key that wrote it."""
    base, store, _, keys, rec = keyed
    movie = int(rec.item_ids[0])
    rating = {"user_id": 1, "movie_id": movie, "rating": 1.0}
    status, headers, answer = _send(base, "POST", "/ratings", rating)
    assert status == 401 and headers["www-authenticate"] == "Bearer" and "needs an API key" in answer["error"]
    wrong = keys["scoped"][1][:-4] + "AAAA"
    assert call(base, "POST", "/ratings", rating, key=wrong) == (401, {"error": "unknown API key"})
    status, answer = call(base, "POST", "/ratings", {**rating, "user_id": 4}, key=keys["scoped"][1])
    assert status == 403 and f"{keys['scoped'][0].id} may write for users 1-3, not for user 4" in answer["error"]
    assert _rows(store) == []
    assert call(base, "POST", "/ratings", rating, key=keys["scoped"][1])[0] == 201
    assert call(base, "POST", "/ratings", {**rating, "user_id": 4_000_000}, key=keys["backend"][1])[0] == 201
    assert _rows(store) == [(1, movie, 1.0, keys["scoped"][0].id), (4_000_000, movie, 1.0, keys["backend"][0].id)]
    # reads stay open by default
    assert call(base, "GET", f"/users/{int(rec.user_ids[0])}/recommendations?k=3")[0] == 200


def test_a_correction_is_stored_and_answered_as_one(keyed):
    """A changed rating within the same second got 201 {"stored": false} and was lost."""
    base, store, _, keys, rec = keyed
    user, movie, key = int(rec.user_ids[1]), int(rec.item_ids[1]), keys["backend"][1]
    status, first = call(base, "POST", "/ratings", {"user_id": user, "movie_id": movie, "rating": 5.0}, key=key)
    assert status == 201 and first["stored"] and not first["correction"] and first["previous_rating"] is None
    assert abs(first["timestamp"] - time.time()) < 5  # the server's clock
    status, fix = call(base, "POST", "/ratings", {"user_id": user, "movie_id": movie, "rating": 2.0}, key=key)
    assert status == 201 and fix == {"stored": True, "correction": True, "previous_rating": 5.0,
                                     "timestamp": first["timestamp"] + 1}
    status, again = call(base, "POST", "/ratings", {"user_id": user, "movie_id": movie, "rating": 2.0}, key=key)
    assert status == 201 and again == {"stored": False, "correction": False, "previous_rating": 2.0,
                                       "timestamp": fix["timestamp"]}
    near = int(time.time()) - 60  # a client's own clock, within the allowed skew
    status, other = call(base, "POST", "/ratings", {"user_id": user, "movie_id": int(rec.item_ids[2]), "rating": 3.0,
                                                    "timestamp": near}, key=key)
    assert status == 201 and other["timestamp"] == near


def test_a_key_over_its_rate_gets_429_with_retry_after(keyed):
    base, _, _, keys, rec = keyed
    body = {"user_id": 9, "movie_id": int(rec.item_ids[3]), "rating": 3.0}
    assert call(base, "POST", "/ratings", body, key=keys["slow"][1])[0] == 201
    status, headers, answer = _send(base, "POST", "/ratings", {**body, "rating": 3.5},
                                    {"Authorization": f"Bearer {keys['slow'][1]}"})
    assert status == 429 and headers["retry-after"] == "1" and "over its 1 writes per second" in answer["error"]
    assert call(base, "POST", "/ratings", {**body, "rating": 4.0}, key=keys["backend"][1])[0] == 201  # its own budget
    time.sleep(1.05)
    assert call(base, "POST", "/ratings", {**body, "rating": 3.5}, key=keys["slow"][1])[0] == 201


def test_a_request_for_another_host_is_refused_unread(keyed):
    """DNS rebinding: a page of evil.example that resolves its name to 127.0.0.1 makes the
    browser send `Host: evil.example`; a cross-Host POST /ratings got 201."""
    base, store, _, keys, rec = keyed
    port = urllib.parse.urlsplit(base).port
    body = {"user_id": 2, "movie_id": int(rec.item_ids[4]), "rating": 0.5}
    auth = {"Authorization": f"Bearer {keys['backend'][1]}"}
    before = _rows(store)
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        status, headers, answer = _send(base, "POST", "/ratings", body, {"Host": host, **auth})
        assert status == 400 and "Host" in answer["error"] and headers["connection"] == "close"
        assert _send(base, "GET", "/model", headers={"Host": host})[0] == 400
        assert _send(base, "GET", "/health", headers={"Host": host})[0] == 200  # a probe's Host: its own address
    assert _rows(store) == before
    assert _send(base, "POST", "/ratings", body, {"Host": f"localhost:{port}", **auth})[0] == 201


def test_a_revoked_key_stops_working_without_a_restart(keyed):
    base, _, file, _, rec = keyed
    key, secret = file.add(users=parse_users("50"))
    body = {"user_id": 50, "movie_id": int(rec.item_ids[5]), "rating": 4.0}
    deadline = time.monotonic() + 5
    while (status := call(base, "POST", "/ratings", body, key=secret)[0]) == 401 and time.monotonic() < deadline:
        time.sleep(0.2)  # the server looks at the keys file once a second
    assert status == 201
    file.revoke(key.id)
    deadline = time.monotonic() + 5
    while (answer := call(base, "POST", "/ratings", {**body, "rating": 1.0}, key=secret))[0] == 201:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert answer == (401, {"error": f"API key {key.id} was revoked"})


def test_reads_need_a_key_when_the_server_says_so(tmp_path, tiny_bundle, light_install):
    _, secret = KeyFile(tmp_path / KEYS_FILE).add(users=parse_users("1"))
    rec = Recommender.from_bytes(tiny_bundle)
    user = int(rec.user_ids[0])
    with serving(light_install, tiny_bundle, tmp_path, "--read-key-required", "--allowed-hosts",
                 "movierec.test,127.0.0.1") as (base, _):
        for path in (f"/users/{user}/recommendations", "/model", f"/movies/{int(rec.item_ids[0])}/similar"):
            status, headers, answer = _send(base, "GET", path)
            assert status == 401 and "needs an API key" in answer["error"], path
            assert call(base, "GET", path, key=secret)[0] == 200  # any valid key reads
        status, _, answer = _send(base, "POST", "/recommendations", {"history": [int(rec.item_ids[0])]})
        assert status == 401
        for path in ("/health", "/", "/openapi.json"):
            assert _send(base, "GET", path, headers={"Host": "movierec.test"})[0] == 200, path
        assert _send(base, "GET", "/model", headers={"Host": "localhost"})[0] == 400  # not in this allowlist


def test_the_api_description_says_writes_need_a_key(keyed):
    """/docs gets an Authorize button for the key, and the refusals are described."""
    base = keyed[0]
    status, spec = call(base, "GET", "/openapi.json")
    post = spec["paths"]["/ratings"]["post"]
    assert status == 200 and post["security"] == [{"apiKey": []}] and {"401", "403", "429"} <= set(post["responses"])
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer",
        "description": "an API key from `movierec keys add`, sent as Authorization: Bearer <key>"}
    assert "security" not in spec["paths"]["/users/{user_id}/recommendations"]["get"]


@pytest.mark.parametrize("host, why", [
    ("*.", "a name of letters"), ("api.example.com:443", "no port"), ("[::1]", "no brackets"),
    ("a*b", "'*' only as"), ("*.::1", "an address, not *.address"), ("localhost:", "no port"),
])
def test_an_allowed_host_that_would_never_match_or_match_any_is_refused(host, why):
    """Before: "*." became "*" (any host), and a port, brackets or an inner '*' were taken but
    never matched a request."""
    with pytest.raises(AccessError, match=re.escape(f"allowed host {host!r}: {why}")):
        Access(None, allowed_hosts=(host,))


def test_allowed_hosts_are_compared_as_normalised():
    access = Access(None, allowed_hosts=("*.Example.COM.", "::1", " API.test "))
    assert access.allowed_hosts == ("*.example.com", "::1", "api.test")
    assert access.host_allowed("a.example.com:443") and access.host_allowed("[::1]:80")
    assert not access.host_allowed("evil.com")


def _waiting(monkeypatch) -> None:
    """A server's keys file looked at on every request (not once a second)."""
    monkeypatch.setattr("movierec.serving.access.REFRESH_S", 0.0)


def test_a_keys_file_that_cannot_be_looked_at_stops_a_start_and_leaves_no_key_valid_while_serving(
        tmp_path, monkeypatch, capsys):
    """Before: stat() failing otherwise than "not found" raised NotADirectoryError (a traceback at
    start; while serving a plain-text 500, and the old keys, a revoked one too, kept working)."""
    _waiting(monkeypatch)
    (tmp_path / "file").write_text("")
    with pytest.raises(AccessError, match=f"{tmp_path / 'file' / KEYS_FILE}: cannot be read \\(Not a directory"):
        Access(tmp_path / "file" / KEYS_FILE)
    folder = tmp_path / "keys"
    folder.mkdir()
    key, secret = KeyFile(folder / KEYS_FILE).add(backend=True)
    access = Access(folder / KEYS_FILE)
    assert access.authenticate(f"Bearer {secret}") == key
    folder.rename(tmp_path / "moved")
    folder.write_text("")  # its parent is now a file
    for _ in range(3):
        with pytest.raises(AccessDenied, match="unknown API key"):
            access.authenticate(f"Bearer {secret}")
    assert capsys.readouterr().err.count("cannot be read (Not a directory); no key is valid until it is fixed") == 1
    folder.unlink()
    (tmp_path / "moved").rename(folder)
    assert access.authenticate(f"Bearer {secret}") == key


def test_a_keys_file_others_may_write_is_refused(tmp_path, monkeypatch, capsys):
    """Whoever may write the keys file may add a key: before, a file of mode 0666 was used."""
    _waiting(monkeypatch)
    path = tmp_path / KEYS_FILE
    key, secret = KeyFile(path).add(backend=True)
    path.chmod(0o620)
    with pytest.raises(AccessError, match=f"{path}: writable by group or others \\(mode 0620\\).*chmod 600 {path}"):
        Access(path)
    path.chmod(0o600)
    access = Access(path)
    assert access.authenticate(f"Bearer {secret}") == key
    path.chmod(0o602)
    with pytest.raises(AccessDenied, match="unknown API key"):
        access.authenticate(f"Bearer {secret}")
    assert "(mode 0602), so anyone of them could add a key; chmod 600" in capsys.readouterr().err
    path.chmod(0o600)
    assert access.authenticate(f"Bearer {secret}") == key


def test_the_keys_file_is_not_written_through_a_planted_link(tmp_path):
    """Before: the new file was .movierec-keys.json.<pid>.tmp, opened with O_CREAT|O_TRUNC: a link
    planted there made `keys add` overwrite the file it pointed to, and put the link in the keys
    file's place."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / KEYS_FILE
    (tmp_path / f".{KEYS_FILE}.{os.getpid()}.tmp").symlink_to(victim)
    key, _ = KeyFile(path).add(users=parse_users("1"))
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [k.id for k in KeyFile(path).keys()] == [key.id]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [KEYS_FILE, f"{KEYS_FILE}.lock", f".{KEYS_FILE}.{os.getpid()}.tmp", "victim"])  # no temporary left


def test_revoking_an_unknown_key_changes_nothing_on_disk(tmp_path):
    """Before: the file was rewritten (a new inode) and, where there was none, created."""
    path = tmp_path / KEYS_FILE
    KeyFile(path).add(backend=True)
    before = path.stat()
    with pytest.raises(AccessError, match="no key 'mr_000000000000'"):
        KeyFile(path).revoke("mr_000000000000")
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    missing = tmp_path / "none" / KEYS_FILE
    with pytest.raises(AccessError, match="no key 'mr_000000000000'"):
        KeyFile(missing).revoke("mr_000000000000")
    assert not missing.parent.exists()
