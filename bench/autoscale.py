"""Autoscaling: a burst against an autoscaled deployment (1 -> 2 instances) vs one fixed instance, and the
cold start of a deployment scaled to zero vs a warm request — both measured in the same run.

Setup: ``modelyard up --no-defaults`` (temporary MODELYARD_HOME) with three endpoints of Gemma 3 270M
(llama.cpp), each with one deployment and default request settings (one request in flight per instance):

- ``fixed``: ``instance_count: 1`` — the baseline;
- ``auto``: ``autoscale: {min_instances: 1, max_instances: 2, target_in_flight: 1, upscale_delay_s:
  --up-delay (1), downscale_delay_s: 3}``;
- ``zero``: ``autoscale: {min_instances: 0, max_instances: 1, downscale_delay_s: 1}``.

Threads: ``options: {threads: --threads}`` (1) on every deployment, so that the comparison is one vs two
instances and not a different thread count per instance. (Left unset, the gateway gives ``fixed`` all
cores and each of ``auto``'s instances half of them; on a busy 2-core machine llama.cpp's spinning threads
then make ``fixed`` many times slower, which is not what autoscaling buys. ``--threads 0`` measures that.)

**Burst.** ``--clients`` (4) clients each send ``--per-client`` (6) chat requests (``max_tokens:
--max-tokens`` (16), temperature 0) back to back; the burst's p50/p95 latency and its wall time. Rounds
alternate ``fixed`` and ``auto`` (``--rounds`` (2) of each, order swapped every round, to spread the
shared machine's noise); before each ``auto`` round the script waits until it is back at one instance.
The burst against ``auto`` includes the time its second instance takes to start (it is what a user
waits for). Reported: p95(auto) ÷ p95(fixed) over all requests of each, and how many instances
``auto`` reached.

**Cold start.** ``--cold`` (3) times: wait until ``zero`` has no instance, time one request (cold),
then one more at once (warm). Reported: median cold and warm latency and their ratio.

    .venv/bin/python bench/autoscale.py [--clients 4] [--per-client 6] [--rounds 2] [--cold 3]

Results: a table on stdout and ``bench/results/autoscale.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _up  # noqa: E402
from _common import percentile  # noqa: E402

MODEL = "gemma-3-270m"


class Bench:
    def __init__(self, gw: _up.Gateway, args: argparse.Namespace) -> None:
        self.gw, self.args = gw, args
        self.key = gw.admin_key

    def api(self, method: str, path: str, body: Any = None) -> Any:
        status, out = _up.http(method, self.gw.url + path, body, key=self.key, timeout=300)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {out}")
        return out

    def ask(self, endpoint: str, n: int = 0) -> float:
        body = {"model": endpoint, "messages": [{"role": "user", "content": f"Tell me a fact about the number {n}."}],
                "max_tokens": self.args.max_tokens, "temperature": 0}
        t0 = time.perf_counter()
        status, out = _up.http("POST", self.gw.url + "/v1/chat/completions", body, key=self.key, timeout=300)
        if status != 200:
            raise RuntimeError(f"{endpoint}: {status} {out}")
        return time.perf_counter() - t0

    def instances(self, endpoint: str) -> int:
        return len(self.api("GET", f"/api/endpoints/{endpoint}/deployments/{endpoint}")["instances"])

    def wait_instances(self, endpoint: str, count: int, timeout_s: float = 120) -> float:
        t0 = time.monotonic()
        while self.instances(endpoint) != count:
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{endpoint} did not reach {count} instance(s) in {timeout_s:.0f}s")
            time.sleep(0.2)
        return time.monotonic() - t0

    def create(self, name: str, **spec: Any) -> dict[str, Any]:
        self.api("POST", "/api/endpoints", {"name": name})
        return self.api("POST", f"/api/endpoints/{name}/deployments", {"name": name, "model": MODEL, **spec})

    def burst(self, endpoint: str) -> dict[str, Any]:
        peak = [self.instances(endpoint)]
        done = [False]

        def watch() -> None:
            while not done[0]:
                peak[0] = max(peak[0], self.instances(endpoint))
                time.sleep(0.2)

        def client(c: int) -> list[float]:
            return [self.ask(endpoint, c * 100 + i) for i in range(self.args.per_client)]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.args.clients + 1) as pool:
            watcher = pool.submit(watch)
            try:
                results = list(pool.map(client, range(self.args.clients)))
                wall = time.perf_counter() - t0
            finally:  # the watcher stops on an error (or Ctrl-C) too, or leaving the pool would wait for it forever
                done[0] = True
            watcher.result()
        latencies = [x for r in results for x in r]
        return {"endpoint": endpoint, "latencies_s": latencies, "wall_s": wall, "peak_instances": peak[0]}


def summary(latencies: list[float]) -> dict[str, float | None]:
    return {"n": len(latencies), "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95)}


def run(gw: _up.Gateway, args: argparse.Namespace) -> dict[str, Any]:
    b = Bench(gw, args)
    env = _up.environment()  # the load average at the start
    options = {"options": {"threads": args.threads}} if args.threads else {}
    fixed = b.create("fixed", instance_count=1, **options)
    auto = b.create("auto", autoscale={"min_instances": 1, "max_instances": 2, "target_in_flight": 1,
                                       "upscale_delay_s": args.up_delay, "downscale_delay_s": 3}, **options)
    b.create("zero", autoscale={"min_instances": 0, "max_instances": 1, "downscale_delay_s": 1}, **options)
    threads = {"fixed": fixed["options"].get("threads") or "default (all cores)",
               "auto": auto["options"].get("threads") or "default (cores / 2)"}
    for endpoint in ("fixed", "auto", "zero"):  # warm-up, not measured
        b.ask(endpoint)

    bursts: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for endpoint in (("fixed", "auto") if r % 2 == 0 else ("auto", "fixed")):
            if endpoint == "auto":
                b.wait_instances("auto", 1)
            bursts.append(b.burst(endpoint))
            print(f"round {r + 1} {endpoint}: p95 {percentile(bursts[-1]['latencies_s'], 95):.2f}s, "
                  f"wall {bursts[-1]['wall_s']:.1f}s, peak {bursts[-1]['peak_instances']} instance(s)", flush=True)

    cold: list[float] = []
    warm: list[float] = []
    for i in range(args.cold):
        b.wait_instances("zero", 0)
        cold.append(b.ask("zero", 1000 + i))
        warm.append(b.ask("zero", 2000 + i))
        print(f"cold start {i + 1}: {cold[-1]:.2f}s, then warm {warm[-1]:.2f}s", flush=True)

    by = {e: [x for bb in bursts if bb["endpoint"] == e for x in bb["latencies_s"]] for e in ("fixed", "auto")}
    fixed_s, auto_s = summary(by["fixed"]), summary(by["auto"])
    events = b.api("GET", "/api/endpoints/auto/deployments/auto/events")["data"]
    return {
        "settings": vars(args), "threads": threads, "environment": env, "loadavg_end": _up.loadavg(),
        "bursts": [{k: v for k, v in bb.items() if k != "latencies_s"} | summary(bb["latencies_s"]) for bb in bursts],
        "fixed": fixed_s, "auto": auto_s,
        "p95_ratio_auto_vs_fixed": auto_s["p95_s"] / fixed_s["p95_s"],
        "p50_ratio_auto_vs_fixed": auto_s["p50_s"] / fixed_s["p50_s"],
        "wall_ratio_auto_vs_fixed": sum(bb["wall_s"] for bb in bursts if bb["endpoint"] == "auto")
        / sum(bb["wall_s"] for bb in bursts if bb["endpoint"] == "fixed"),
        "auto_peak_instances": max(bb["peak_instances"] for bb in bursts if bb["endpoint"] == "auto"),
        "auto_scale_events": [(e["kind"], e["from"], e["to"]) for e in events],
        "cold_s": cold, "warm_s": warm,
        "cold_median_s": statistics.median(cold), "warm_median_s": statistics.median(warm),
        "cold_vs_warm_ratio": statistics.median(cold) / statistics.median(warm),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--up-delay", type=float, default=1.0)
    parser.add_argument("--cold", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per instance (0: the default)")
    args = parser.parse_args()
    _up.install_signal_handlers()
    gw = _up.Gateway(extra_args=("--no-defaults",)).start()
    try:
        gw.wait_ready()
        out = run(gw, args)
    except Exception:
        print(gw.logs_report(), file=sys.stderr)
        raise
    finally:
        gw.stop()
        gw.cleanup_home()
    rows = [["fixed (1 instance)", out["fixed"]["n"], _up.fmt(out["fixed"]["p50_s"], 2), _up.fmt(out["fixed"]["p95_s"], 2), 1],
            ["autoscale 1..2", out["auto"]["n"], _up.fmt(out["auto"]["p50_s"], 2), _up.fmt(out["auto"]["p95_s"], 2),
             out["auto_peak_instances"]]]
    print()
    print(_up.table(rows, ["burst", "requests", "p50 s", "p95 s", "peak instances"]))
    print(f"p95 autoscale / fixed: {out['p95_ratio_auto_vs_fixed']:.2f}   "
          f"burst wall time autoscale / fixed: {out['wall_ratio_auto_vs_fixed']:.2f}   threads {out['threads']}")
    print(f"scale to zero: cold start {out['cold_median_s']:.2f}s vs warm {out['warm_median_s']:.2f}s "
          f"(median of {len(out['cold_s'])}): {out['cold_vs_warm_ratio']:.1f}x")
    print(f"load average at start {out['environment']['loadavg_start']}, at end {out['loadavg_end']}")
    print(f"wrote {_up.write_json('autoscale.json', out)}")


if __name__ == "__main__":
    main()
