"""Opening the interaction store: what it creates on disk and what it says when a location cannot
be a store (the PostgreSQL half, a server restarted under a running API, is in test_postgres.py)."""

import os
import sqlite3
import stat

import pytest

from movierec.serving.store import InteractionStore, StoreError


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_sqlite_store_and_its_wal_files_are_readable_by_their_owner_only(tmp_path):
    """The file holds what users rated: 0600 whatever the umask lets through (0644 before)."""
    path = tmp_path / "deep" / "ratings.sqlite3"
    store = InteractionStore(path)
    assert store.add(1, 2, 4.0, 10) is True
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["ratings.sqlite3", "ratings.sqlite3-shm", "ratings.sqlite3-wal"]
    assert {name: _mode(path.parent / name) for name in files} == dict.fromkeys(files, 0o600)


def test_an_existing_store_keeps_the_mode_its_operator_gave_it(tmp_path):
    path = tmp_path / "shared.sqlite3"
    sqlite3.connect(path).close()
    path.chmod(0o640)
    InteractionStore(path).add(1, 2, 4.0, 10)
    assert _mode(path) == 0o640


@pytest.mark.parametrize("kind, words", [
    ("folder", "is a folder, expected a SQLite file"),
    ("text file", "cannot be opened as a SQLite ratings store (file is not a database)"),
])
def test_a_location_that_cannot_be_a_store_is_a_store_error_naming_it(tmp_path, kind, words):
    location = tmp_path / "notes.txt"
    if kind == "folder":
        location.mkdir()
    else:
        location.write_text("not a database " * 100)
    with pytest.raises(StoreError) as error:
        InteractionStore(location)
    assert str(error.value).startswith(f"{location}: {words}")
    assert location.is_dir() if kind == "folder" else location.read_text() == "not a database " * 100


def test_an_unreachable_postgresql_is_a_store_error_without_the_url_s_secrets(tmp_path):
    from conftest import free_port

    with pytest.raises(StoreError, match=r"127\.0\.0\.1:\d+/db: cannot connect \(.*refused"):
        InteractionStore(f"postgresql://me@127.0.0.1:{free_port()}/db")
    with pytest.raises(StoreError, match=r"me:\*\*\*@h/db: must not hold a password") as error:
        InteractionStore("postgresql://me:hunter2@h/db")
    assert "hunter2" not in str(error.value)
