"""Load test of `serve` over real HTTP: N concurrent clients, latency percentiles, requests/s.

    python scripts/load_test.py --checkpoint runs/quickstart/checkpoint_epoch_0012 --replicas 1 2 \\
        --clients 8 --duration 20 [--rows-per-request 1] [--kill-replica-at 10]
    python scripts/load_test.py --url http://127.0.0.1:8000 --clients 8 --duration 20 [--token-file FILE]

With --checkpoint it starts an embedded Ray, serves the checkpoint with each --replicas
count in turn and measures each. With --kill-replica-at S it then runs once more per
count and kills one replica (ray.kill) S seconds in, reporting the requests before the
kill, from the kill until Serve runs the full count again, and after. With --url it
measures a service that already runs. With --token-file every request carries that
bearer token (and a service started here requires it). Each client is a thread with its own
requests.Session that sends its next request as soon as the last one is answered.
Request rows come from --data (its columns other than the model's label).
Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass
class Result:
    """One request: when it started and ended (monotonic seconds), and whether it succeeded."""

    start: float
    end: float
    ok: bool


@dataclass
class Load:
    url: str
    body: bytes
    clients: int
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (the bearer token)
    results: list[Result] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    def client(self, rows: int) -> None:
        session = requests.Session()
        headers = {**self.headers, "Content-Type": "application/json"}
        while not self.stopping.is_set():
            start = time.monotonic()
            try:
                r = session.post(f"{self.url}/predict", data=self.body, headers=headers, timeout=60)
                ok = r.status_code == 200 and len(r.json()["predictions"]) == rows
                why = None if ok else f"HTTP {r.status_code}"
            except (requests.RequestException, ValueError) as e:
                ok, why = False, type(e).__name__
            self.results.append(Result(start, time.monotonic(), ok))
            if why:
                self.errors[why] = self.errors.get(why, 0) + 1

    def run(self, rows: int, seconds: float, during=None) -> tuple[float, float]:
        """Run the clients for `seconds`; `during(started)` runs meanwhile on this thread.
        Returns the window (start, end) of the measurement."""
        threads = [threading.Thread(target=self.client, args=(rows,), daemon=True) for _ in range(self.clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        until = started + seconds
        if during is not None:
            during(started)
            until = max(until, time.monotonic() + 3)  # some load after whatever it waited for
        time.sleep(max(0.0, until - time.monotonic()))
        self.stopping.set()
        for t in threads:
            t.join(timeout=90)
        return started, until


def summarize(results: list[Result], start: float, end: float, inside=None) -> dict[str, float]:
    """Requests that started in [start, end) (or those given as `inside`), and their rate over it."""
    inside = [r for r in results if start <= r.start < end] if inside is None else inside
    latencies = np.array([r.end - r.start for r in inside if r.ok]) * 1000
    span = max(end - start, 1e-9)
    return {"requests": len(inside), "errors": sum(not r.ok for r in inside),
            "rps": sum(r.ok for r in inside) / span,
            "p50": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
            "p99": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
            "max": float(latencies.max()) if len(latencies) else float("nan")}


def request_body(data: str, label: str | None, rows: int) -> bytes:
    df = pd.read_csv(data)
    if label and label in df.columns:
        df = df.drop(columns=[label])
    sample = df.sample(n=rows, replace=len(df) < rows, random_state=0)
    return json.dumps({"records": json.loads(sample.to_json(orient="records"))}).encode()


def warm_up(url: str, body: bytes, headers: dict[str, str], seconds: float = 2.0) -> None:
    session, until = requests.Session(), time.monotonic() + seconds
    headers = {**headers, "Content-Type": "application/json"}
    while time.monotonic() < until:
        session.post(f"{url}/predict", data=body, headers=headers, timeout=60)


def kill_one_replica(at: float, replicas: int, report: dict) -> Callable[[float], None]:
    """What `Load.run` calls meanwhile: kill one replica `at` seconds in, then wait until
    Serve runs `replicas` replicas again, none of them the killed one."""
    import ray

    from app.serve import replicas as serve_replicas

    def during(started: float) -> None:
        time.sleep(max(0.0, started + at - time.monotonic()))
        victim = next(name for name, state in serve_replicas().items() if state == "RUNNING")
        report["killed"] = time.monotonic()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        while True:
            now = serve_replicas()
            if victim not in now and list(now.values()).count("RUNNING") == replicas:
                break
            time.sleep(0.1)
        report["recovered"] = time.monotonic()

    return during


def row(replicas, clients, rows, phase, s) -> str:
    return (f"| {replicas} | {clients} | {rows} | {phase} | {s['requests']} | {s['errors']} | {s['rps']:.0f} "
            f"| {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--checkpoint", help="serve this checkpoint on an embedded Ray and measure it")
    target.add_argument("--url", help="measure a service that already runs, e.g. http://127.0.0.1:8000")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts to measure")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per measurement")
    parser.add_argument("--rows-per-request", type=int, default=1, help="records in each request")
    parser.add_argument("--kill-replica-at", type=float, help="also kill a replica this many seconds into a run")
    parser.add_argument("--data", default=str(REPO / "data" / "penguins.csv"), help="CSV that rows come from")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (with --checkpoint)")
    parser.add_argument("--token-file", help="bearer token to send (with --checkpoint: the service requires it)")
    args = parser.parse_args()
    if args.kill_replica_at is not None and not args.checkpoint:
        parser.error("--kill-replica-at needs --checkpoint (it kills a replica of the service it starts)")

    lines = ["| replicas | clients | rows/request | phase | requests | errors | req/s | p50 ms | p99 ms | max ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    from app import serve as serving

    token = serving.read_token(args.token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if args.url:
        schema = requests.get(f"{args.url}/schema", headers=headers, timeout=30).json()
        body = request_body(args.data, schema.get("label"), args.rows_per_request)
        warm_up(args.url, body, headers)
        load = Load(args.url, body, args.clients, headers)
        window = load.run(args.rows_per_request, args.duration)
        lines.append(row("?", args.clients, args.rows_per_request, "steady", summarize(load.results, *window)))
        print("\n".join(lines))
        return 0

    import ray
    from ray import serve

    from app import cluster
    from app.predictor import load_predictor

    label = load_predictor(args.checkpoint).state.label
    body = request_body(args.data, label, args.rows_per_request)
    cluster.quiet_logs()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    for replicas in args.replicas:
        options = serving.ServeOptions(replicas=replicas, token_sha256=serving.token_digest(args.token_file,
                                                                                               "127.0.0.1"))
        serving.check_replicas_fit(options)
        url = serving.deploy(args.checkpoint, options, "127.0.0.1", args.port)
        warm_up(url, body, headers)
        load = Load(url, body, args.clients, headers)
        window = load.run(args.rows_per_request, args.duration)
        lines.append(row(replicas, args.clients, args.rows_per_request, "steady",
                         summarize(load.results, *window)))
        if args.kill_replica_at is not None:
            warm_up(url, body, headers, 1.0)
            load, report = Load(url, body, args.clients, headers), {}
            start, end = load.run(args.rows_per_request, args.duration,
                                  kill_one_replica(args.kill_replica_at, replicas, report))
            killed, recovered = report["killed"], report["recovered"]
            # A request in flight at the kill belongs to the kill window.
            phases = (("before the kill", start, killed, [r for r in load.results if r.end < killed]),
                      (f"kill → {replicas} running again ({recovered - killed:.1f} s)", killed, recovered,
                       [r for r in load.results if r.end >= killed and r.start < recovered]),
                      ("after recovery", recovered, end, [r for r in load.results if r.start >= recovered]))
            for phase, a, b, inside in phases:
                lines.append(row(replicas, args.clients, args.rows_per_request, phase,
                                 summarize(load.results, a, b, inside)))
            if load.errors:
                notes.append(f"{replicas} replica(s), errors during the kill run: "
                             + ", ".join(f"{n} x {k}" for k, n in load.errors.items()))
        serve.delete(serving.APP_NAME)
    print(f"\n{os.cpu_count()} CPUs; {args.clients} clients on the same machine; "
          f"{args.duration:g} s per run after a warm-up\n")
    print("\n".join(lines))
    for note in notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
