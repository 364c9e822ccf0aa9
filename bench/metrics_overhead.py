"""The hot-path cost of metrics (issue 13): ZeroMQ small-model throughput of
one quern-worker with --http on and /metrics scraped every second, against
an identical worker without --http (metrics off: every record call returns
at once), same run, same load generator (quern bench), interleaved repeats,
medians reported.

usage: /usr/bin/python3 bench/metrics_overhead.py [--build build] [--repeats 5]
       [--jobs 100000] [--window 256] [--quern-args "--threads 1"]
Prints a markdown table (paste into bench/README.md with the command).
"""
import argparse
import os
import re
import shlex
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from zmq_compare import MODELS, bench, quern_model, start, stop  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(os.path.dirname(HERE), "build"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=100000)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--quern-args", default="")
    a = ap.parse_args()

    dims, acts = MODELS["small"]
    tmp = tempfile.mkdtemp(prefix="qn-metricsbench.")
    os.makedirs(os.path.join(tmp, "repo", "small", "1"))
    quern_model.write_mlp(os.path.join(tmp, "repo", "small", "1", "model.safetensors"),
                          quern_model.random_mlp(dims, acts, 1))
    worker = os.path.join(a.build, "quern-worker")
    base = [worker, "--model-repo", os.path.join(tmp, "repo")] + shlex.split(a.quern_args)
    http_port = 5890
    servers = {
        "metrics off": (start(base + ["--zmq-bind", "tcp://127.0.0.1:5881"], "worker: ready"), "tcp://127.0.0.1:5881"),
        "--http + scrape/s": (start(base + ["--zmq-bind", "tcp://127.0.0.1:5882", "--http", "127.0.0.1:%d" % http_port],
                                    "worker: ready"), "tcp://127.0.0.1:5882"),
    }
    stop_scrape = threading.Event()
    scrapes = {"n": 0, "bytes": 0, "requests": 0.0}

    def scrape():
        while not stop_scrape.wait(1.0):
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % http_port, timeout=5) as r:
                text = r.read().decode()
            scrapes["n"] += 1
            scrapes["bytes"] = len(text)
            m = re.search(r'^quern_requests_total\{model="small",version="1",status="ok"\} (\S+)', text, re.M)
            if m:
                scrapes["requests"] = float(m.group(1))

    t = threading.Thread(target=scrape, daemon=True)
    t.start()
    results = {}
    try:
        for rep in range(a.repeats):
            order = list(servers) if rep % 2 == 0 else list(reversed(list(servers)))
            for name in order:
                p, ep = servers[name]
                r = bench(a.build, ep, "small", dims[0], a.jobs, a.window)
                results.setdefault(name, []).append(r)
                print("# rep %d %s: %.0f jobs/s p50 %.1f us" % (rep, name, r["jobs_per_s"], r["latency_us"]["p50"]),
                      file=sys.stderr, flush=True)
    finally:
        stop_scrape.set()
        t.join(5)
        for p, _ in servers.values():
            stop(p)
    print("| worker | jobs/s (median) | p50 µs | p99 µs | runs (jobs/s) |")
    print("| --- | --: | --: | --: | --- |")
    med = {}
    for name, rs in results.items():
        jps = [r["jobs_per_s"] for r in rs]
        med[name] = statistics.median(jps)
        print("| %s | %.0f | %.1f | %.1f | %s |" % (name, med[name], statistics.median(r["latency_us"]["p50"] for r in rs),
              statistics.median(r["latency_us"]["p99"] for r in rs), ", ".join("%.0f" % j for j in jps)))
    off, on = med["metrics off"], med["--http + scrape/s"]
    print()
    print("- with metrics and a scrape every second: %.1f%% %s (%d scrapes of %d bytes; the last counted %d ok requests)"
          % (abs(100 * (on - off) / off), "slower" if on < off else "faster", scrapes["n"], scrapes["bytes"],
             scrapes["requests"]))


if __name__ == "__main__":
    main()
