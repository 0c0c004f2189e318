"""Serving the published model: what an installation costs, and its speed.

    .venv/bin/python benchmarks/serve.py                       # the latest local RecommenderFlow run
    .venv/bin/python benchmarks/serve.py --model <run id|bundle.zip> --duration 60 --connections 8
    .venv/bin/python benchmarks/serve.py --parts install       # one part only
    .venv/bin/python benchmarks/serve.py --parts latency --baseline /tmp/main   # against older code, side by side

``install``: the model's wheel installed into fresh virtual environments, side by side: the
light install (``movierec``: numpy + Annoy), with ``[onnx]``, and the full one (``[train]``:
torch, Ray, Metaflow...): installed size (every distribution's files but pip's and setuptools'),
cold start of ``movierec recommend --user 1`` (median of 5 fresh processes) and its peak RSS,
each with the rating backend that installation runs (numpy, onnx, torch).
``latency``: p50/p99 of each Recommender query over 2,000 calls for random known users/movies,
and over HTTP `movierec serve` in its own process on loopback, loaded by wrk (Debian's `wrk`
package) for ``--duration`` seconds over ``--connections`` connections, every request for a
random known user; for each rating backend, side by side; then POST /ratings under the same load
(random known users, movies and stars, into the default SQLite store), with the rows it stored. The
server runs as an operator would run it: every request names its Host (checked against the
allowlist), every one sends an API key (a backend key, with a write rate no run reaches), and
reads need one too (``--read-key-required``), so the figures include the access checks.
``--baseline DIR``: the same loads against `movierec serve` from another checkout (e.g. ``git
archive main | tar -x -C DIR``), alternating with this one's, ``--rounds`` times (its server gets
the same requests and ignores the key). Writes its sections of benchmarks/RESULTS.md
(``serve-install``, ``serve``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from results import emit, markdown_table

from movierec.serving.access import KEYS_FILE, KeyFile
from movierec.serving.bundle import bundle_of_run
from movierec.serving.recommender import BACKENDS, Recommender
from movierec.serving.store import InteractionStore
from movierec.training import packaging

REPO = Path(__file__).resolve().parents[1]


def load(source: str | None, backend: str) -> tuple[Recommender, str]:
    """The model, and a --model argument that loads the same one in another process."""
    if not source:
        from metaflow import Flow, namespace

        namespace(None)
        source = Flow("RecommenderFlow").latest_successful_run.id
    return Recommender.load(source, backend), source


INSTALLS = {  # name: (extras, the backend that installation rates with)
    "light: movierec": ("", "numpy"),
    "light + onnx: movierec[onnx]": ("[onnx]", "onnx"),
    "full: movierec[train]": ("[train]", "torch"),
}
SIZE = """
import importlib.metadata as md
total = 0
for dist in md.distributions():
    if dist.metadata["Name"].lower() not in ("pip", "setuptools"):
        total += sum(f.locate().stat().st_size for f in dist.files or () if f.locate().is_file())
print(total)
"""
PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def bundle_bytes(source: str) -> bytes:
    """The bundle zip of a run id or zip file (a folder: zipped as it is)."""
    path = Path(source)
    if path.is_file():
        return path.read_bytes()
    if path.is_dir():
        import io
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for f in sorted(path.iterdir()):
                zf.write(f, f.name)
        return buf.getvalue()
    return bundle_of_run(source)[1]


def installs(model_arg: str, user: int, work: Path) -> list[dict]:
    """Each of INSTALLS in a fresh venv: size, cold start, peak RSS."""
    bundle = bundle_bytes(model_arg)
    wheel = packaging.build_wheel(bundle, packaging.bundle_version(bundle), work)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    rows = []
    for name, (extras, backend) in INSTALLS.items():
        venv = work / backend
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        t0 = time.perf_counter()
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}{extras}"], check=True, env=env,
                       cwd=work)
        install_s = time.perf_counter() - t0
        python = str(venv / "bin" / "python")
        size = int(subprocess.run([python, "-c", SIZE], capture_output=True, text=True, check=True, env=env).stdout)
        cmd = [str(venv / "bin" / "movierec"), "--backend", backend, "recommend", "--user", str(user)]
        subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=work)  # warm the page cache
        starts, peaks = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=work)
            starts.append(time.perf_counter() - t0)
            peaks.append(int(subprocess.run([python, "-c", PEAK_RSS, *cmd], capture_output=True, text=True,
                                            check=True, env=env, cwd=work).stdout))
        rows.append({"installation": name, "rating backend": backend, "installed MB": f"{size / 1e6:,.0f}",
                     "pip install s": f"{install_s:.0f}",
                     "cold `movierec recommend` s (median of 5)": f"{np.median(starts):.2f}",
                     "peak RSS MB": f"{np.median(peaks) / 1024:.0f}"})
        print(rows[-1], flush=True)
    return rows


def latency_row(name: str, fn, args: list) -> dict:
    fn(*args[0])  # warm-up
    times = []
    for a in args:
        t0 = time.perf_counter()
        fn(*a)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return {"query": name, "calls": len(ms), "p50 ms": f"{np.percentile(ms, 50):.2f}",
            "p99 ms": f"{np.percentile(ms, 99):.2f}", "mean ms": f"{ms.mean():.2f}"}


def in_process(rec: Recommender, n: int = 2000) -> list[dict]:
    rng = np.random.default_rng(0)
    users = [int(u) for u in rng.choice(rec.user_ids, n)]
    movies = [int(m) for m in rng.choice(rec.item_ids, n)]
    histories = [[int(m) for m in rng.choice(rec.item_ids, 5, replace=False)] for _ in range(n)]
    rows = [
        latency_row("recommend(user, k=10)", rec.recommend, [(u, 10) for u in users]),
        latency_row("recommend_for_history(5 movies, k=10)", rec.recommend_for_history, [(h, 10) for h in histories]),
        latency_row("similar_movies(movie, k=10)", rec.similar_movies, [(m, 10) for m in movies]),
        latency_row("predict_rating(user, movie)", rec.predict_rating, list(zip(users, movies))),
    ]
    return [{"backend": rec.backend, **r} for r in rows]


WRK_READ = """
local ids = {%(users)s}
local headers = {["Host"] = "localhost", ["Authorization"] = "Bearer %(key)s"}
math.randomseed(42)
request = function()
  return wrk.format("GET", "/users/" .. ids[math.random(#ids)] .. "/recommendations?k=10", headers)
end
"""
WRK_WRITE = """
local users, movies = {%(users)s}, {%(movies)s}
local headers = {["Host"] = "localhost", ["Authorization"] = "Bearer %(key)s", ["Content-Type"] = "application/json"}
math.randomseed(7)
request = function()
  local body = string.format('{"user_id": %%d, "movie_id": %%d, "rating": %%.1f}', users[math.random(#users)],
                             movies[math.random(#movies)], math.random(1, 10) / 2)
  return wrk.format("POST", "/ratings", headers, body)
end
"""


def _seconds(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def over_http(rec: Recommender, model_arg: str, duration: int, connections: int, *, lua: str = WRK_READ,
              baseline: Path | None = None) -> dict:
    """wrk's figures for the ``lua`` script (GET recommendations, or POST /ratings: ``WRK_WRITE``) against
    `movierec serve` over ``model_arg`` (from the ``baseline`` checkout: without the access options,
    which older code lacks), and how many ratings its store holds afterwards."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "movierec.cli", "--model", str(Path(model_arg).resolve()) if Path(model_arg).exists()
           else model_arg, "--backend", rec.backend, "serve", "--port", str(port)]
    store = tempfile.mkdtemp(prefix="movierec-serve-")
    cmd += ["--store", os.path.join(store, "ratings.sqlite3")]
    _, key = KeyFile(os.path.join(store, KEYS_FILE)).add(backend=True, name="benchmark", rate=1e9)
    if baseline is None:
        cmd += ["--keys", os.path.join(store, KEYS_FILE), "--read-key-required"]
    env = os.environ | {"PYTHONPATH": str(baseline or REPO)}
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, cwd=baseline or REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/health", timeout=1)  # /health needs no key
                break
            except OSError:
                time.sleep(0.2)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(lua % {"users": ", ".join(str(int(u)) for u in rec.user_ids),
                                "movies": ", ".join(str(int(m)) for m in rec.item_ids), "key": key})
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name,
                              base], capture_output=True, text=True, check=True).stdout
        os.unlink(script.name)
        still_up = urllib.request.urlopen(base + "/health", timeout=5).status == 200
        stored = InteractionStore(os.path.join(store, "ratings.sqlite3")).count()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(store, ignore_errors=True)
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests/s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50 ms": _seconds(pct["50"]) * 1000, "p99 ms": _seconds(pct["99"]) * 1000,
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "errors": int(errors.group(1)) if errors else 0,
        "socket errors": socket_errors.group(1) if socket_errors else "none",
        "server up after": still_up, "stored": stored, "raw": out,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="run id, bundle folder or zip (default: the latest local flow run)")
    parser.add_argument("--parts", default="install,latency", help="install, latency or both (default)")
    parser.add_argument("--duration", type=int, default=60, help="seconds of HTTP load (default 60)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent HTTP connections (default 8)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="another checkout whose `movierec serve` gets the same HTTP loads (numpy backend), "
                             "alternating with this one's")
    parser.add_argument("--rounds", type=int, default=1, help="with --baseline: how many times each pair alternates")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    rec, model_arg = load(args.model, "numpy")
    if not rec.user_data:
        raise SystemExit(f"{model_arg}: a bundle without per-user data: serve.py measures per-user queries")
    info = rec.info.get("dataset") or {}
    ratings = f"{info['ratings']:,}" if "ratings" in info else "?"  # a bundle made outside a run may not say
    model = (f"Model: run {rec.info.get('run_id')}, {ratings} ratings, {len(rec.user_ids):,} "
             f"users, {len(rec.item_ids):,} movies.")
    if "install" in parts:
        with tempfile.TemporaryDirectory() as work:
            rows = installs(model_arg, int(rec.user_ids[0]), Path(work))
        emit("serve-install", "## What an installation costs (`benchmarks/serve.py --parts install`)\n\n"
             + model + " Fresh venvs, one per installation, the wheel of that model; sizes count every installed "
             "distribution but pip and setuptools; cold start and peak RSS of `movierec --backend <b> recommend "
             "--user <first user>` in a fresh process (the page cache warm), medians of 5. torch in the `[train]` venv "
             "is 2.13.0's CPU build, as this machine's pip configuration finds it (from PyPI alone pip would take "
             "the CUDA build, several GB more).\n\n"
             + markdown_table(rows, list(rows[0]))
             + "\n\nGoals (issue 18): light install <= 150 MB, cold recommend <= 0.5 s, peak RSS <= 150 MB.\n",
             not args.no_write)
    if "latency" in parts:
        rows, http_rows = [], []
        load_text = f"wrk, 1 thread, {args.connections} connections, {args.duration} s"

        def http_row(request: str, backend: str, http: dict) -> dict:
            print(http.pop("raw"))
            return {"request": request, "backend": backend, "load": load_text,
                    "requests/s": f"{http['requests/s']:,.0f}", "p50 ms": f"{http['p50 ms']:.2f}",
                    "p99 ms": f"{http['p99 ms']:.2f}", "requests": f"{http['requests']:,}",
                    "errors (non-2xx)": http["errors"], "socket errors": http["socket errors"],
                    "ratings stored": f"{http['stored']:,}"}

        for backend in BACKENDS:
            rec, model_arg = load(args.model, backend)
            rows += in_process(rec)
            if args.baseline is None:
                http_rows.append(http_row("GET recommendations", backend,
                                          over_http(rec, model_arg, args.duration, args.connections)))
        rec, model_arg = load(args.model, "numpy")
        if args.baseline is None:
            http_rows.append(http_row("POST /ratings (SQLite)", "numpy",
                                      over_http(rec, model_arg, args.duration, args.connections, lua=WRK_WRITE)))
        else:  # side by side, alternating, so a machine's changing load weighs on both alike
            for _ in range(args.rounds):
                for request, lua in (("GET recommendations", WRK_READ), ("POST /ratings (SQLite)", WRK_WRITE)):
                    for tree in (args.baseline, None):
                        http_rows.append(http_row(f"{request}, {'baseline' if tree else 'this checkout'}", "numpy",
                                                  over_http(rec, model_arg, args.duration, args.connections, lua=lua,
                                                            baseline=tree)))
        rows.sort(key=lambda r: r["query"])  # each query's backends side by side
        text = ("## Serving (`benchmarks/serve.py --parts latency`)\n\n" + model + "\n\nIn process, one thread:\n\n"
                + markdown_table(rows, ["query", "backend", "calls", "p50 ms", "p99 ms", "mean ms"])
                + "\n\nOver HTTP on loopback (`movierec serve`, one process; GET /users/{random user}/recommendations"
                "?k=10, and POST /ratings of random known users, movies and stars into the default SQLite store; "
                "the same rating of a movie again is stored once; Host checked, an API key on every request, "
                "reads too):\n\n" + markdown_table(http_rows, list(http_rows[0]))
                + "\n\nGoals: in process p50 <= 2 ms and p99 <= 10 ms; over HTTP >= 500 requests/s with p99 <= 50 ms "
                "and no errors.\n")
        emit("serve", text, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
