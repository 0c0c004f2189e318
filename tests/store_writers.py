"""Work for the worker processes of tests/test_feedback.py's concurrency tests, in a module of its own:
a spawned worker imports the module its function comes from, and this one imports only the store
(a worker importing test_feedback paid for conftest, Metaflow and the serving stack: ~1 s of CPU each)."""

from movierec.serving.store import InteractionStore


def write_many(args: tuple[str, int, int]) -> int:
    """Writer ``writer`` adds ratings of movies 0..n-1 to the store at ``path``: how many it stored."""
    path, writer, n = args
    store = InteractionStore(path)
    return sum(store.add(writer, movie, 3.0, 1000 + movie) for movie in range(n))


def correct_many(args: tuple[str, int]) -> int:
    """Writer ``writer`` corrects user 1's rating of movie 1 thirty times, all at one timestamp, with
    its own stars: how many of its changes were stored."""
    path, writer = args
    store = InteractionStore(path)
    return sum(store.rate(1, 1, 0.5 * (writer + 1), 1_000).stored for _ in range(30))
