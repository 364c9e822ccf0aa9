"""Issue 2's ZeroMQ comparison, in one run on one machine: quern-worker
against the hand-written Python baseline (bench/baseline_worker.py) and the
transport's ceiling (bench/ceiling_router), same load generator (quern
bench), same shapes, interleaved repeats, medians reported.

usage: /usr/bin/python3 bench/zmq_compare.py [--build build] [--repeats 3]
       [--quern-args "--threads 1"] [--only small|wide] [--skip-baseline]
Prints a markdown table (paste into bench/README.md with the command).
"""
import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "tools"))
import quern_model  # noqa: E402

PY = "/usr/bin/python3"
MODELS = {"small": ([64, 128, 10], ["relu", "softmax"]),
          "wide": ([256, 1024, 1024, 16], ["relu", "relu", "none"])}


def start(cmd, ready):
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    t0 = time.time()
    for line in p.stderr:
        if ready in line:
            break
        if time.time() - t0 > 30:
            raise RuntimeError("server did not start: %s" % cmd)
    # keep draining stderr so the server never blocks on a full pipe
    import threading
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    return p


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()


def bench(build, ep, model, cols, jobs, window, rows=1, warmup=None):
    cmd = [os.path.join(build, "quern"), "bench", "--zmq", ep, "--model", model, "--cols", str(cols),
           "--jobs", str(jobs), "--window", str(window), "--rows", str(rows), "--json",
           "--warmup", str(warmup if warmup is not None else max(200, jobs // 20))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not line:
        raise RuntimeError("bench failed: %s\n%s%s" % (" ".join(cmd), out.stdout, out.stderr))
    return json.loads(line[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(SRC, "build"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quern-args", default="")
    ap.add_argument("--only", choices=list(MODELS))
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply job counts")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="qn-zmqbench.")
    repo = os.path.join(tmp, "repo")
    for name, (dims, acts) in MODELS.items():
        os.makedirs(os.path.join(repo, name, "1"))
        quern_model.write_mlp(os.path.join(repo, name, "1", "model.safetensors"),
                              quern_model.random_mlp(dims, acts, 1))

    ports = iter(range(5700, 5800))
    servers = {}
    ep = "tcp://127.0.0.1:%d" % next(ports)
    servers["ceiling"] = (start([os.path.join(a.build, "bench", "ceiling_router"), ep], "listening"), ep)
    ep = "tcp://127.0.0.1:%d" % next(ports)
    servers["quern"] = (start([os.path.join(a.build, "quern-worker"), "--model-repo", repo, "--zmq-bind", ep]
                              + shlex.split(a.quern_args), "worker: ready"), ep)
    ep = "tcp://127.0.0.1:%d" % next(ports)
    servers["quern-mb1"] = (start([os.path.join(a.build, "quern-worker"), "--model-repo", repo, "--zmq-bind", ep]
                                  + shlex.split(a.quern_args) + ["--max-batch", "1"], "worker: ready"), ep)
    if not a.skip_baseline:
        for name in MODELS:
            ep = "tcp://127.0.0.1:%d" % next(ports)
            servers["baseline-" + name] = (start([PY, os.path.join(HERE, "baseline_worker.py"), "--bind", ep,
                                                  "--model", os.path.join(repo, name, "1", "model.safetensors")],
                                                 "baseline_worker:"), ep)
    s = a.scale
    configs = []
    for name in ([a.only] if a.only else list(MODELS)):
        cols = MODELS[name][0][0]
        heavy = name == "wide"
        for window, jobs in ((256, int((30000 if heavy else 100000) * s)), (1, int((3000 if heavy else 10000) * s))):
            configs.append((name, cols, window, jobs))
    results = {}
    try:
        for rep in range(a.repeats):
            for (name, cols, window, jobs) in configs:
                for server in ("ceiling", "baseline-" + name, "quern", "quern-mb1"):
                    if server not in servers:
                        continue
                    p, ep = servers[server]
                    model = "m" if server == "ceiling" else name
                    r = bench(a.build, ep, model, cols, jobs, window)
                    results.setdefault((name, window, server), []).append(r)
                    print("# rep %d %s w=%d %s: %.0f jobs/s p50 %.1f us" % (rep, name, window, server,
                          r["jobs_per_s"], r["latency_us"]["p50"]), file=sys.stderr, flush=True)
    finally:
        for p, _ in servers.values():
            stop(p)

    print("| model | window | server | jobs/s (median) | p50 µs | p99 µs | runs (jobs/s) |")
    print("| --- | --: | --- | --: | --: | --: | --- |")
    for (name, window, server), rs in results.items():
        jps = [r["jobs_per_s"] for r in rs]
        p50 = statistics.median(r["latency_us"]["p50"] for r in rs)
        p99 = statistics.median(r["latency_us"]["p99"] for r in rs)
        print("| %s | %d | %s | %.0f | %.1f | %.1f | %s |" % (name, window, server, statistics.median(jps), p50, p99,
              ", ".join("%.0f" % j for j in jps)))
    # the ratios, from the medians
    med = {k: statistics.median(r["jobs_per_s"] for r in v) for k, v in results.items()}
    p50 = {k: statistics.median(r["latency_us"]["p50"] for r in v) for k, v in results.items()}
    print()
    for name in ([a.only] if a.only else list(MODELS)):
        q = med.get((name, 256, "quern"))
        b = med.get((name, 256, "baseline-" + name))
        c = med.get((name, 256, "ceiling"))
        if q and b:
            print("- %s, window 256: quern / baseline = %.2fx" % (name, q / b))
        if q and c:
            print("- %s, window 256: quern / ceiling = %.0f%%" % (name, 100 * q / c))
        ql, bl, cl = p50.get((name, 1, "quern")), p50.get((name, 1, "baseline-" + name)), p50.get((name, 1, "ceiling"))
        if ql and bl:
            print("- %s, window 1: quern p50 / baseline p50 = %.2f" % (name, ql / bl))
        if ql and cl:
            print("- %s, window 1: quern p50 / ceiling p50 = %.2f" % (name, ql / cl))
        qb = med.get((name, 256, "quern-mb1"))
        if q and qb:
            print("- %s, window 256: batching buys %.2fx (quern vs --max-batch 1)" % (name, q / qb))


if __name__ == "__main__":
    main()
