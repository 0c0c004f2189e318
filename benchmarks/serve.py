"""Serving speed of the published model: in-process latency and HTTP throughput under load.

    .venv/bin/python benchmarks/serve.py                       # the latest local RecommenderFlow run
    .venv/bin/python benchmarks/serve.py --model <run id|bundle.zip> --duration 60 --connections 8

In process: p50/p99 of each Recommender query over 2,000 calls for random known users/movies.
Over HTTP: `movierec serve` in its own process on loopback, loaded by wrk (Debian's `wrk`
package) for ``--duration`` seconds over ``--connections`` connections, every request for a
random known user. Both with the rating model on onnxruntime and on torch, side by side.
Writes its section of benchmarks/RESULTS.md.
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

from movierec.serving import Recommender

REPO = Path(__file__).resolve().parents[1]


def load(source: str | None, backend: str) -> tuple[Recommender, str]:
    """The model, and a --model argument that loads the same one in another process."""
    if not source:
        from metaflow import Flow, namespace

        namespace(None)
        source = Flow("RecommenderFlow").latest_successful_run.id
    return Recommender.load(source, backend), source


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


WRK_SCRIPT = """
local ids = {%s}
math.randomseed(42)
request = function()
  return wrk.format("GET", "/users/" .. ids[math.random(#ids)] .. "/recommendations?k=10")
end
"""


def _seconds(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def over_http(rec: Recommender, model_arg: str, duration: int, connections: int) -> dict:
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "movierec.cli", "--model", model_arg, "--backend", rec.backend, "serve",
           "--port", str(port)]
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(WRK_SCRIPT % ", ".join(str(int(u)) for u in rec.user_ids))
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name,
                              base], capture_output=True, text=True, check=True).stdout
        os.unlink(script.name)
        still_up = urllib.request.urlopen(base + "/health", timeout=5).status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests/s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50 ms": _seconds(pct["50"]) * 1000, "p99 ms": _seconds(pct["99"]) * 1000,
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "errors": int(errors.group(1)) if errors else 0,
        "socket errors": socket_errors.group(1) if socket_errors else "none",
        "server up after": still_up, "raw": out,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="run id, bundle folder or zip (default: the latest local flow run)")
    parser.add_argument("--duration", type=int, default=60, help="seconds of HTTP load (default 60)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent HTTP connections (default 8)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows, http_rows = [], []
    for backend in ("onnx", "torch"):
        rec, model_arg = load(args.model, backend)
        rows += in_process(rec)
        http = over_http(rec, model_arg, args.duration, args.connections)
        print(http.pop("raw"))
        http_rows.append({"backend": backend,
                          "load": f"wrk, 1 thread, {args.connections} connections, {args.duration} s",
                          "requests/s": f"{http['requests/s']:,.0f}", "p50 ms": f"{http['p50 ms']:.2f}",
                          "p99 ms": f"{http['p99 ms']:.2f}", "requests": f"{http['requests']:,}",
                          "errors (non-2xx)": http["errors"], "socket errors": http["socket errors"]})
    rows.sort(key=lambda r: r["query"])  # each query's two backends side by side
    info = rec.info.get("dataset") or {}
    text = (f"## Serving (`benchmarks/serve.py`)\n\nModel: run {rec.info.get('run_id')}, "
            f"{info.get('ratings', '?'):,} ratings, {len(rec.user_ids):,} users, {len(rec.item_ids):,} movies.\n\n"
            "In process, one thread:\n\n"
            + markdown_table(rows, ["query", "backend", "calls", "p50 ms", "p99 ms", "mean ms"])
            + "\n\nOver HTTP on loopback (`movierec serve`, one process; "
            "GET /users/{random user}/recommendations?k=10):\n\n" + markdown_table(http_rows, list(http_rows[0]))
            + "\n\nGoals: in process p50 <= 2 ms and p99 <= 10 ms; over HTTP >= 500 requests/s with p99 <= 50 ms and "
            "no errors.\n")
    emit("serve", text, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
