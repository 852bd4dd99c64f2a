"""Start-up: time from `modelyard up` to the first answered request; idle memory of the gateway and its instances.

Gateway side: ``modelyard up --port P`` with a temporary MODELYARD_HOME, polled from the
moment the process is created (every ~20 ms, stdlib HTTP, so the poller costs little):

- ``/readyz`` 200 (every deployment ready),
- the first successful chat answer from ``default`` (gemma-3-270m, 16 tokens, greedy),
- the first successful embeddings answer from ``embed`` (all-MiniLM-L6-v2).

``cold`` is the first start with a fresh home: it also creates the database, the admin
key, and assembles the packaged GGUF into MODELYARD_HOME/models (page cache already warm:
this script does not drop caches). ``warm`` starts again on the same home (``--repeats``
times, medians). After the first answers and ``--idle`` seconds of quiet, VmRSS and PSS
(/proc/PID/smaps_rollup: the GGUF pages are mmapped and shared between processes, so PSS
is the fair share) are read for the gateway process and every instance (pids from
``GET /api/status``), plus any other process under the gateway.

Baseline: a plain Python process that loads the same two files directly
(``llama_cpp.Llama`` with the instance's settings, then
``sentence_transformers.SentenceTransformer(path, device="cpu")``), answers one chat prompt and
one embedding, and idles; the same marks and memory are read. Ratios are gateway ÷ direct.

Run:  .venv/bin/python bench/startup.py [--repeats 3] [--idle 5]
Writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _up  # noqa: E402
from _common import median  # noqa: E402

CHAT = {"model": "default", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0}
EMBED = {"model": "embed", "input": "The quick brown fox jumps over the lazy dog."}

BASELINE_SCRIPT = r"""
import json, os, sys, time
def mark(name): print(json.dumps({"mark": name, "t": time.monotonic()}), flush=True)
mark("interpreter")
gguf, minilm, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
from llama_cpp import Llama
mark("llama_imported")
llm = Llama(model_path=gguf, n_ctx=4096, n_threads=threads, n_batch=512, logits_all=False, verbose=False)
mark("llama_loaded")
prompt = ("A conversation between a user and a helpful, knowledgeable assistant who answers briefly.\n\n"
          "User: What is the capital of Italy?\nAssistant: The capital of Italy is Rome.\n"
          "User: What is the capital of France?\nAssistant:")
out = llm.create_completion(prompt, max_tokens=16, temperature=0.0, stop=["\nUser:"])
mark("chat_answered")
from sentence_transformers import SentenceTransformer
mark("st_imported")
st = SentenceTransformer(minilm, device="cpu")
mark("st_loaded")
vec = st.encode(["The quick brown fox jumps over the lazy dog."], normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False)
mark("embed_answered")
print(json.dumps({"answer": out["choices"][0]["text"], "dims": int(vec.shape[1])}), flush=True)
sys.stdin.read()  # idle until the benchmark closes stdin
"""

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


QUIET = {"threshold": 0.15, "max_wait_s": 120.0}


def settle(label: str) -> None:
    """Wait for other processes to quieten before a timed start (shared machine)."""
    waited, foreign = _up.wait_quiet(1.0, QUIET["threshold"], QUIET["max_wait_s"])
    if waited > 2:
        print(f"    (waited {waited:.0f}s for quiet before {label}; other load now {foreign:.2f} cores)", flush=True)


def gateway_run(home: Path, label: str, idle_s: float, timeout: float, embed: bool = True) -> dict[str, Any]:
    """One `modelyard up` from launch to idle memory, then stop it. `embed=False`: a home without
    the `embed` endpoint, started with --no-defaults (the chat model alone)."""
    gw = _up.Gateway(home=home, log_name=f"startup-{label}", log_level="info",
                     extra_args=() if embed else ("--no-defaults",))
    wanted = {"readyz", "chat", "embed"} if embed else {"readyz", "chat"}
    marks: dict[str, float] = {}
    out: dict[str, Any] = {"label": label}
    settle(label)
    wall0 = time.time()
    meter = _up.CpuMeter()
    try:
        gw.start()
        deadline = gw.t_launch + timeout
        key = None
        while time.monotonic() < deadline and not wanted <= marks.keys():
            if not gw.alive():
                raise RuntimeError(f"modelyard up exited with {gw.proc.returncode}:\n{gw.log_tail()}")  # type: ignore[union-attr]
            gw.note_children()
            if key is None and (home / "admin.key").exists():
                key = gw.admin_key or None
            try:
                if "healthz" not in marks and _up.http("GET", gw.url + "/healthz", timeout=2)[0] == 200:
                    marks["healthz"] = time.monotonic()
                if "healthz" in marks:
                    if "readyz" not in marks and _up.http("GET", gw.url + "/readyz", timeout=2)[0] == 200:
                        marks["readyz"] = time.monotonic()
                    if key and "chat" not in marks:
                        sent = time.monotonic()
                        code, body = _up.http("POST", gw.url + "/v1/chat/completions", CHAT, key=key, timeout=60)
                        out.setdefault("chat_attempts", []).append(
                            [round(sent - gw.t_launch, 3), round(time.monotonic() - gw.t_launch, 3), code])
                        if code == 200 and body["choices"][0]["message"]["content"]:
                            marks["chat"] = time.monotonic()
                            out["chat_answer"] = body["choices"][0]["message"]["content"]
                        elif code not in (503, 409):
                            out.setdefault("chat_errors", []).append(code)
                    if key and embed and "embed" not in marks:
                        sent = time.monotonic()
                        code, body = _up.http("POST", gw.url + "/v1/embeddings", EMBED, key=key, timeout=60)
                        out.setdefault("embed_attempts", []).append(
                            [round(sent - gw.t_launch, 3), round(time.monotonic() - gw.t_launch, 3), code])
                        if code == 200 and body["data"][0]["embedding"]:
                            marks["embed"] = time.monotonic()
                        elif code not in (503, 409):
                            out.setdefault("embed_errors", []).append(code)
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.02)
        if not wanted <= marks.keys():
            raise TimeoutError(f"{label}: not answered after {timeout:.0f}s (marks: {sorted(marks)}):\n{gw.log_tail()}")
        out.update({f"{k}_s": v - gw.t_launch for k, v in marks.items()})
        out["cpu_until_answered"] = meter.read()  # foreign_cores: other people's work while it started
        out["all_answered_s"] = max(out["chat_s"], out.get("embed_s", 0.0))

        time.sleep(idle_s)
        instances = gw.instances()
        kids = gw.note_children()
        mem: dict[str, Any] = {"gateway": {"pid": gw.proc.pid, **_up.memory(gw.proc.pid)}}  # type: ignore[union-attr]
        inst_pids = set()
        for i in instances:
            if i.get("pid"):
                inst_pids.add(int(i["pid"]))
                mem[f"instance {i['endpoint']}/{i['model']}"] = {"pid": i["pid"], **_up.memory(int(i["pid"]))}
        for pid in kids:
            if pid not in inst_pids:
                try:
                    mem[f"other {pid}"] = {"pid": pid, "cmd": _up.cmdline(pid)[:80], **_up.memory(pid)}
                except OSError:
                    pass
        mem["total"] = {k: sum(v.get(k, 0.0) for n, v in mem.items() if n != "total")
                        for k in ("rss", "pss", "rssanon", "rssfile")}
        out["memory_mib"] = mem
        out["instances"] = [{k: i.get(k) for k in ("endpoint", "model", "pid", "port", "state")} for i in instances]
        out["breakdown_s"] = log_breakdown(home, gw.log_path, wall0)
    finally:
        failed = sys.exc_info()[0] is not None
        gw.stop()
        out["stop_s"] = gw.stop_s
        if failed:
            saved = gw.save_logs(_up.RESULTS / f"startup_logs_{label}")
            print(f"logs of the failed start kept in {saved}; their tails:\n{gw.logs_report()}", flush=True)
    return out


def accepted(run: Any, label: str, attempts: int, discarded: list[dict[str, Any]]) -> dict[str, Any]:
    """Run `run()` until other processes stayed under the threshold during the start (at most `attempts` times)."""
    for n in range(attempts):
        out = run()
        foreign = out["cpu_until_answered"]["foreign_cores"]
        if foreign <= QUIET["threshold"] or n == attempts - 1:
            out["noisy"] = foreign > QUIET["threshold"]
            out["attempt"] = n + 1
            return out
        print(f"    {label}: other processes used {foreign:.2f} cores meanwhile; measuring again", flush=True)
        discarded.append({"label": label, **out})
    raise AssertionError("unreachable")


def drop_embed_endpoint(home: Path, timeout: float) -> None:
    """Set-up for the chat-only diagnostic: delete `embed` from the home's configuration."""
    gw = _up.Gateway(home=home, log_name="startup-setup")
    try:
        gw.start()
        gw.wait_ready(timeout)
        code, body = _up.http("DELETE", gw.url + "/api/endpoints/embed", key=gw.admin_key)
        if code >= 300:
            raise RuntimeError(f"could not delete the embed endpoint: {code} {body}")
    finally:
        gw.stop()


def log_breakdown(home: Path, gateway_log: Path, wall0: float) -> dict[str, float]:
    """Seconds after launch of the milestones the gateway and instance logs record (asctime, ms)."""
    found: dict[str, float] = {}

    def scan(path: Path, patterns: dict[str, str]) -> None:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return
        for line in lines:
            m = LOG_TIME.match(line)
            if not m:
                continue
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - wall0
            if t < -1:
                continue  # an earlier run's line (warm starts append to the same logs)
            for name, needle in patterns.items():
                if needle in line and name not in found:
                    found[name] = round(t, 3)

    scan(gateway_log, {"gateway: assembling gguf": "assembling", "gateway: first instance spawned": "started "})
    for log in sorted((home / "logs").glob("*.log")):
        tag = "default" if log.name.startswith("default") else "embed" if log.name.startswith("embed") else log.stem
        scan(log, {f"{tag} instance: loading model": "loading ", f"{tag} instance: assembling gguf": "assembling",
                   f"{tag} instance: ready": " ready"})
    return dict(sorted(found.items(), key=lambda kv: kv[1]))


def baseline_run(gguf: str, minilm: str, idle_s: float) -> dict[str, Any]:
    threads = max(1, os.cpu_count() or 1)
    settle("direct load")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", BASELINE_SCRIPT, gguf, minilm, str(threads)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    out: dict[str, Any] = {}
    meter = _up.CpuMeter()
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            msg = json.loads(line)
            if "mark" in msg:
                out[f"{msg['mark']}_s"] = msg["t"] - t0
            else:
                out.update(msg)
                out["cpu_until_answered"] = meter.read()
                break
        else:
            raise RuntimeError(f"baseline process exited with {proc.wait()}")
        time.sleep(idle_s)
        out["memory_mib"] = {"direct": {"pid": proc.pid, **_up.memory(proc.pid)}}
    finally:
        try:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(10)
        except (subprocess.TimeoutExpired, OSError):
            os.killpg(proc.pid, 9)
            proc.wait()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="warm gateway starts and direct loads (medians)")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of quiet before memory is read")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--max-foreign", type=float, default=0.15, help="other processes' cores counted as quiet")
    ap.add_argument("--wait-quiet", type=float, default=120.0,
                    help="before each start, wait up to this many seconds for the machine to be quiet (0: do not wait)")
    ap.add_argument("--attempts", type=int, default=3,
                    help="measure a start again (up to this many times) when other processes used more than "
                         "--max-foreign cores during it")
    ap.add_argument("--no-chat-only", action="store_true",
                    help="skip the diagnostic warm starts with the chat model alone (no `embed` instance loading beside it)")
    args = ap.parse_args()
    _up.install_signal_handlers()
    QUIET.update(threshold=args.max_foreign, max_wait_s=args.wait_quiet)

    env = _up.environment()
    print(f"load average before: {env['loadavg_start']}  cpus: {env['cpus']}", flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="modelyard-bench-startup-")
    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    try:
        homes = iter(range(1, 1000))

        def cold_run() -> dict[str, Any]:
            nonlocal home
            home = Path(tmp.name) / f"home{next(homes)}"  # a fresh one for every attempt
            home.mkdir()
            return gateway_run(home, "cold", args.idle, args.timeout)

        home = Path(tmp.name)
        print("cold start (fresh MODELYARD_HOME) ...", flush=True)
        runs.append(accepted(cold_run, "cold", args.attempts, discarded))
        _print_run(runs[-1])
        for n in range(args.repeats):
            print(f"warm start {n + 1}/{args.repeats} (same home) ...", flush=True)
            runs.append(accepted(lambda: gateway_run(home, f"warm{n + 1}", args.idle, args.timeout),
                                 f"warm{n + 1}", args.attempts, discarded))
            _print_run(runs[-1])

        chat_only: list[dict[str, Any]] = []
        if not args.no_chat_only:
            drop_embed_endpoint(home, args.timeout)
            for n in range(args.repeats):
                print(f"diagnostic: warm start {n + 1}/{args.repeats} with the chat model alone ...", flush=True)
                chat_only.append(accepted(lambda: gateway_run(home, f"chatonly{n + 1}", args.idle, args.timeout, embed=False),
                                          f"chatonly{n + 1}", args.attempts, discarded))
                _print_run(chat_only[-1])

        # the exact files the gateway served, resolved the way the instances resolve them
        os.environ["MODELYARD_HOME"] = str(home)
        from modelyard.catalog.registry import Catalog
        from modelyard.catalog.sources import resolve_path
        from modelyard.settings import Settings

        settings = Settings.from_env()
        catalog = Catalog.load(settings)
        gguf = str(resolve_path(catalog.get("gemma-3-270m"), settings))
        minilm = str(resolve_path(catalog.get("all-minilm-l6-v2"), settings))
        base: list[dict[str, Any]] = []
        for n in range(args.repeats):
            print(f"direct load {n + 1}/{args.repeats} (plain Python process) ...", flush=True)
            base.append(accepted(lambda: baseline_run(gguf, minilm, args.idle), f"direct{n + 1}", args.attempts, discarded))
            b = base[-1]
            print(f"    llama loaded {b['llama_loaded_s']:.2f}s, chat answered {b['chat_answered_s']:.2f}s, "
                  f"MiniLM loaded {b['st_loaded_s']:.2f}s, embedding {b['embed_answered_s']:.2f}s; "
                  f"RSS {b['memory_mib']['direct']['rss']:.0f} MiB, PSS {b['memory_mib']['direct']['pss']:.0f} MiB; "
                  f"other load {b['cpu_until_answered']['foreign_cores']:.2f} cores",
                  flush=True)
    finally:
        tmp.cleanup()

    cold, warm = runs[0], runs[1:]
    med = lambda rows, key: median([r[key] for r in rows])  # noqa: E731

    def mem(rows: list[dict[str, Any]], who: str, kind: str) -> float | None:
        return median([r["memory_mib"][who].get(kind) for r in rows if who in r["memory_mib"]])

    summary = {
        "cold": {k: cold.get(k) for k in ("healthz_s", "readyz_s", "chat_s", "embed_s", "all_answered_s", "stop_s")},
        "warm": {k: med(warm, k) for k in ("healthz_s", "readyz_s", "chat_s", "embed_s", "all_answered_s", "stop_s")},
        "warm_chat_only": {k: med(chat_only, k) for k in ("healthz_s", "readyz_s", "chat_s", "stop_s")} if chat_only else None,
        "direct": {k: med(base, k) for k in ("llama_imported_s", "llama_loaded_s", "chat_answered_s", "st_imported_s",
                                             "st_loaded_s", "embed_answered_s")},
    }
    d = summary["direct"]
    d_llama_only = d["chat_answered_s"]
    d_all = d["embed_answered_s"]
    d_loaded = d["st_loaded_s"]

    def ratio(x: float | None, y: float | None) -> float | None:
        return x / y if x is not None and y else None

    # memory: medians over warm runs (the cold run is in the JSON)
    who = ["gateway", "instance default/gemma-3-270m", "instance embed/all-minilm-l6-v2", "total"]
    memory = {w: {k: mem(warm, w, k) for k in ("rss", "pss", "rssanon", "rssfile")} for w in who}
    memory["direct (both models, one process)"] = {k: mem(base, "direct", k) for k in ("rss", "pss", "rssanon", "rssfile")}
    summary["memory_mib_warm"] = memory
    summary["ratios"] = {
        "readyz_cold / direct_both_loaded": ratio(cold["readyz_s"], d_loaded),
        "readyz_warm / direct_both_loaded": ratio(summary["warm"]["readyz_s"], d_loaded),
        "first_chat_cold / direct_chat": ratio(cold["chat_s"], d_llama_only),
        "first_chat_warm / direct_chat": ratio(summary["warm"]["chat_s"], d_llama_only),
        "first_embed_warm / direct_embed": ratio(summary["warm"]["embed_s"], d_all),
        "all_answered_cold / direct_all": ratio(cold["all_answered_s"], d_all),
        "all_answered_warm / direct_all": ratio(summary["warm"]["all_answered_s"], d_all),
        "pss_total / direct_pss": ratio(memory["total"]["pss"], memory["direct (both models, one process)"]["pss"]),
        "rss_total / direct_rss": ratio(memory["total"]["rss"], memory["direct (both models, one process)"]["rss"]),
    }

    env["loadavg_end"] = _up.loadavg()
    f = _up.fmt
    print()
    print(f"start-up, seconds from process launch (warm: median of {len(warm)}; direct: median of {len(base)}); "
          f"load average {env['loadavg_start']} -> {env['loadavg_end']}")
    rows = [
        ["/healthz 200 (gateway listening)", f(cold.get("healthz_s"), 2), f(summary["warm"]["healthz_s"], 2), "", "", ""],
        ["/readyz 200  vs  both models loaded", f(cold["readyz_s"], 2), f(summary["warm"]["readyz_s"], 2), f(d_loaded, 2),
         f(summary["ratios"]["readyz_cold / direct_both_loaded"], 2), f(summary["ratios"]["readyz_warm / direct_both_loaded"], 2)],
        ["first chat answer (default)", f(cold["chat_s"], 2), f(summary["warm"]["chat_s"], 2), f(d_llama_only, 2),
         f(summary["ratios"]["first_chat_cold / direct_chat"], 2), f(summary["ratios"]["first_chat_warm / direct_chat"], 2)],
        ["first embedding (embed)", f(cold["embed_s"], 2), f(summary["warm"]["embed_s"], 2), f(d_all, 2),
         f(ratio(cold["embed_s"], d_all), 2), f(summary["ratios"]["first_embed_warm / direct_embed"], 2)],
        ["both answered", f(cold["all_answered_s"], 2), f(summary["warm"]["all_answered_s"], 2), f(d_all, 2),
         f(summary["ratios"]["all_answered_cold / direct_all"], 2), f(summary["ratios"]["all_answered_warm / direct_all"], 2)],
        *([["first chat, chat model alone (diagnostic)", "", f(summary["warm_chat_only"]["chat_s"], 2), f(d_llama_only, 2), "",
             f(ratio(summary["warm_chat_only"]["chat_s"], d_llama_only), 2)]] if chat_only else []),
        ["stop (SIGTERM -> exit)", f(cold.get("stop_s"), 2), f(summary["warm"]["stop_s"], 2), "", "", ""],
    ]
    print(_up.table(rows, ["time (s)", "gateway cold", "gateway warm", "direct", "cold/direct", "warm/direct"]))
    print("  direct: 'chat' = import llama_cpp + load GGUF + one answer; 'embed'/'both' = that, then import "
          "sentence_transformers + load MiniLM + one embedding (sequential, one process); '/readyz' compares with both loaded")
    print()
    mrows = [[w, f(m["rss"], 0), f(m["pss"], 0), f(m["rssanon"], 0), f(m["rssfile"], 0)] for w, m in memory.items()]
    print(f"idle memory after {args.idle:.0f}s quiet (MiB, warm runs, median)")
    print(_up.table(mrows, ["process", "RSS", "PSS", "RssAnon", "RssFile"]))
    print(f"  gateway+instances / direct: PSS x{f(summary['ratios']['pss_total / direct_pss'], 2)}, "
          f"RSS x{f(summary['ratios']['rss_total / direct_rss'], 2)}")
    others = {n for r in runs for n in r["memory_mib"] if n.startswith("other")}
    if others:
        print(f"  other processes under the gateway: {sorted(others)}")
    foreign = {r["label"]: round(r["cpu_until_answered"]["foreign_cores"], 2) for r in runs + chat_only}
    foreign.update({f"direct{n + 1}": round(b["cpu_until_answered"]["foreign_cores"], 2) for n, b in enumerate(base)})
    print(f"  other processes' CPU while starting (cores, average): {foreign}"
          + (f"; {len(discarded)} noisy attempts measured again" if discarded else ""))
    noisy_kept = [k for k, v in foreign.items() if v > args.max_foreign]
    if noisy_kept:
        print(f"  NOISY (kept after {args.attempts} attempts): {noisy_kept}")
    if cold.get("breakdown_s"):
        print("\ncold start milestones from the logs (s after launch):",
              ", ".join(f"{k} {v:.2f}" for k, v in cold["breakdown_s"].items()))
    if warm and warm[0].get("breakdown_s"):
        print("warm start milestones from the logs (s after launch):",
              ", ".join(f"{k} {v:.2f}" for k, v in warm[0]["breakdown_s"].items()))

    path = _up.write_json("startup.json", {"benchmark": "startup", "environment": env, "settings": vars(args),
                                           "summary": summary, "gateway_runs": runs, "chat_only_runs": chat_only,
                                           "discarded_noisy_runs": discarded,
                                           "direct_runs": base})
    print(f"\nwrote {path}")
    return 0


def _print_run(r: dict[str, Any]) -> None:
    m = r["memory_mib"]
    print(f"    healthz {r.get('healthz_s', 0):.2f}s, readyz {r['readyz_s']:.2f}s, chat {r['chat_s']:.2f}s, "
          f"embed {_up.fmt(r.get('embed_s'), 2)}s; PSS gateway {m['gateway'].get('pss', 0):.0f} MiB, total {m['total']['pss']:.0f} MiB; "
          f"stop {_up.fmt(r.get('stop_s'), 2)}s; other load {r['cpu_until_answered']['foreign_cores']:.2f} cores", flush=True)


if __name__ == "__main__":
    sys.exit(main())
