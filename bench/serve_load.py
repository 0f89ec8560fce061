"""Load benchmark of ``genrec serve``: latency and throughput of ``POST /recommend`` at 1, 8 and 64
concurrent clients, on localhost.

    python bench/serve_load.py runs/amazon2014_beauty-full --threads 1      # a run directory or a saved one
    python bench/serve_load.py models/beauty --levels 1 8 64 --requests 3000 --seconds 30

Starts the server process (``python -m genrec.cli serve MODEL --port <free port>``), waits for
``/health``, then for each concurrency level drives it with that many clients, each sending its
next history as soon as the previous answer arrives, until ``--requests`` answers or ``--seconds``
have passed (a short warm-up first, not counted); each client has its own httpx ``AsyncClient``
(one keep-alive connection), as separate users would. Histories are the recommender's training
sequences (random prefixes, seeded, as raw item ids). Prints per level: requests, errors (a
non-200 answer or a failed connection), p50 / p99 latency in ms, requests/s, and the server's mean
histories per model call over that level (from ``/health``). Exits 1 if any request failed; the
server is terminated whatever happens.

Targets of issue 13 (Beauty fused model, 2 cores): p99 <= 50 ms at 8 clients, >= 300 requests/s
at 64, zero errors. Note that the clients run on the same cores as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_histories(path: str, method: str | None, n: int, seed: int) -> list[list[str]]:
    """``n`` histories: random non-empty prefixes of random training sequences, as raw ids (the
    last ``max_history``, all the model reads)."""
    from genrec.recommender import Recommender

    rec = Recommender.from_pretrained(path, method)
    rng = np.random.default_rng(seed)
    seqs = [s for s in rec.train_sequences if len(s)]
    out = []
    for u in rng.integers(0, len(seqs), n):
        s = seqs[u]
        end = int(rng.integers(1, len(s) + 1))
        out.append([rec.item_ids[i] for i in s[max(0, end - rec.max_history):end]])
    return out


def wait_for_health(url: str, proc: subprocess.Popen, timeout: float) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before answering /health")
        try:
            r = httpx.get(f"{url}/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the server did not answer {url}/health within {timeout:g} s")


async def drive(url: str, histories: list[list[str]], clients: int, max_requests: int, seconds: float,
                k: int, exclude_seen: bool, warmup: int) -> dict:
    """One concurrency level: latencies of ``max_requests`` requests (or as many as ``seconds`` allow)."""
    import httpx

    # one client (one keep-alive connection) per simulated user: a single AsyncClient pooling 64
    # connections spends ~5 ms of CPU per request on its pool here, measuring itself, not the server
    pool = [httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=1), timeout=30)
            for _ in range(clients)]
    latencies: list[float] = []
    errors: list[str] = []

    async def one(client: httpx.AsyncClient, n: int) -> tuple[float, str | None]:
        body = {"history": histories[n % len(histories)], "k": k, "exclude_seen": exclude_seen}
        t0 = time.perf_counter()
        try:
            r = await client.post("/recommend", json=body)
            err = None if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            err = f"{type(e).__name__}: {e}"
        return time.perf_counter() - t0, err

    try:
        # warm-up, not counted: every connection opened, the model's first calls done
        warm = await asyncio.gather(*(one(pool[n % clients], n) for n in range(max(warmup, clients))))
        warmup_errors = [err for _, err in warm if err is not None]  # reported, never dropped
        before = (await pool[0].get("/health")).json()
        issued = 0
        start = time.perf_counter()
        deadline = start + seconds

        async def user(client: httpx.AsyncClient) -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                latency, err = await one(client, warmup + issued)
                if err is None:  # a fast refusal is no answer: latencies and requests/s count successes
                    latencies.append(latency)
                else:
                    errors.append(err)

        await asyncio.gather(*(user(c) for c in pool))
        wall = time.perf_counter() - start
        after = (await pool[0].get("/health")).json()
    finally:
        await asyncio.gather(*(c.aclose() for c in pool), return_exceptions=True)
    ms = np.asarray(latencies) * 1000
    batches = after["batches"] - before["batches"]
    return {"clients": clients, "requests": len(latencies) + len(errors), "answered": len(latencies),
            "errors": len(errors), "first_errors": errors[:3], "warmup_errors": len(warmup_errors),
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
            "requests_per_s": len(latencies) / wall if wall > 0 else 0.0, "seconds": wall,
            "mean_batch": (after["histories"] - before["histories"]) / batches if batches else 0.0}


def die_with_parent() -> "Callable[[], None] | None":
    """A ``preexec_fn`` that makes the server get SIGTERM when this process dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``); None elsewhere. libc is loaded here, in the parent, so the child
    only makes the one call between fork and exec."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM to this script unwinds like Ctrl-C, so that the server is stopped on the way out."""
    raise KeyboardInterrupt


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server (SIGTERM: a graceful stop), killing it if it takes over 15 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a finished recipe run directory or a saved recommender directory")
    p.add_argument("--method", default=None, help="method to serve (default: the saved one / fusion.primary)")
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads (default 1)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 8, 64], help="concurrent clients (default 1 8 64)")
    p.add_argument("--requests", type=int, default=2000, help="most requests per level (default 2000)")
    p.add_argument("--seconds", type=float, default=20.0, help="most seconds per level (default 20)")
    p.add_argument("--warmup", type=int, default=32, help="requests before each level, not counted (default 32)")
    p.add_argument("--histories", type=int, default=5000, help="distinct histories sampled (default 5000)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--exclude-seen", action="store_true")
    p.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="the server's --max-wait-ms (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for /health (default 180)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    for name in ("threads", "requests", "histories", "k", "max_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seconds <= 0 or args.warmup < 0 or any(c < 1 for c in args.levels):
        p.error("--seconds must be > 0, --warmup >= 0 and every --levels value >= 1")

    from genrec.errors import GenrecError

    try:
        histories = sample_histories(args.model, args.method, args.histories, args.seed)
    except GenrecError as e:  # not a model directory, an unknown method, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "genrec.cli", "serve", args.model, "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    if args.method:
        cmd += ["--method", args.method]
    server_log = tempfile.NamedTemporaryFile("w+", prefix="genrec_serve_", suffix=".log", delete=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    signal.signal(signal.SIGTERM, interrupt)
    proc = subprocess.Popen(cmd, stdout=server_log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                            preexec_fn=die_with_parent())
    results = []
    try:
        health = wait_for_health(url, proc, args.startup_timeout)
        print(f"server: {health['method']} over {health['items']} items, torch threads {args.threads}, "
              f"max_batch {args.max_batch}, max_wait {args.max_wait_ms:g} ms; {os.cpu_count()} CPUs here, "
              f"{len(histories)} sampled histories, k={args.k}", flush=True)
        for clients in args.levels:
            results.append(asyncio.run(drive(url, histories, clients, args.requests, args.seconds, args.k,
                                             args.exclude_seen, args.warmup)))
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {proc.returncode} during the benchmark")
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}; server log: {server_log.name}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        return 130
    finally:
        stop(proc)
        server_log.seek(0)
        tail = server_log.read()[-2000:]
        server_log.close()
    print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7} {'batch':>6}")
    for r in results:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
              f"{r['requests_per_s']:>7.0f} {r['mean_batch']:>6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "threads": args.threads, "k": args.k,
                                               "levels": results}, indent=2))
    failed = sum(r["errors"] + r["warmup_errors"] for r in results)
    if failed:
        print(f"{failed} requests failed, e.g. {[e for r in results for e in r['first_errors']][:3]}; "
              f"server log tail:\n{tail}", file=sys.stderr)
        return 1
    os.unlink(server_log.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
