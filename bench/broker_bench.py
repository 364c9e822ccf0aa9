"""Issue 12's broker benchmark, in one run on one machine: quern bench
(C DEALER, single-row jobs on the small model [64, 128, 10]) against

  direct      one quern-worker's ROUTER (--zmq-bind), no broker
  broker-1    quern-broker + one quern-worker --broker, credit 64 (--max-batch)
  broker-2    quern-broker + two quern-workers --broker, credit 64
  broker-c1   quern-broker + one quern-worker --broker --broker-credit 1

each with W jobs in flight (throughput) and with 1 in flight (a lone
request's latency: what the broker adds to p50). The broker's own CPU per
request comes from /proc/PID/stat (utime + stime) around each broker run.
Configurations are interleaved per repeat; medians reported.

usage: /usr/bin/python3 bench/broker_bench.py [--build build] [--repeats 1]
       [--jobs 50000] [--lone-jobs 5000] [--window 256] [--policy lru]
Prints a markdown table and the ratios the issue asks about.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "tools"))
import quern_model  # noqa: E402

DIMS, ACTS = [64, 128, 10], ["relu", "softmax"]


def start(cmd, pattern):
    """Starts cmd, waits for a stderr line matching pattern, returns (proc, match)."""
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    rx = re.compile(pattern)
    t0 = time.time()
    m = None
    for line in p.stderr:
        m = rx.search(line)
        if m:
            break
        if time.time() - t0 > 30:
            break
    if not m:
        p.kill()
        raise RuntimeError("did not start: %s" % " ".join(cmd))
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    return p, m


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(build, flag, ep, jobs, window):
    cmd = [os.path.join(build, "quern"), "bench", flag, ep, "--model", "small", "--cols", str(DIMS[0]),
           "--jobs", str(jobs), "--window", str(window), "--json", "--warmup", str(max(200, jobs // 20))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not line:
        raise RuntimeError("bench failed: %s\n%s%s" % (" ".join(cmd), out.stdout, out.stderr))
    r = json.loads(line[-1])
    if r["ok"] != jobs:
        raise RuntimeError("not all ok: %s" % line[-1])
    return r


def worker_cmd(build, repo, *extra):
    return [os.path.join(build, "quern-worker"), "--model-repo", repo, "--threads", "1"] + list(extra)


def run_config(build, repo, name, jobs, lone_jobs, window, policy):
    procs = []
    try:
        if name == "direct":
            w, m = start(worker_cmd(build, repo, "--zmq-bind", "tcp://127.0.0.1:*"), r"listening on (\S+)")
            procs.append(w)
            flag, ep, broker = "--zmq", m.group(1), None
        else:
            broker, m = start([os.path.join(build, "quern-broker"), "--bind", "tcp://127.0.0.1:*",
                               "--policy", policy], r"listening on (\S+)")
            procs.append(broker)
            flag, ep = "--broker", m.group(1)
            n = 2 if name == "broker-2" else 1
            extra = ["--broker-credit", "1"] if name == "broker-c1" else []
            for _ in range(n):
                w, _ = start(worker_cmd(build, repo, "--broker", ep, *extra), r"READY to")
                procs.append(w)
            time.sleep(0.3)  # the broker has registered them
        c0 = cpu_s(broker.pid) if broker else 0.0
        thr = bench(build, flag, ep, jobs, window)
        c1 = cpu_s(broker.pid) if broker else 0.0
        lone = bench(build, flag, ep, lone_jobs, 1)
        counted = jobs + max(200, jobs // 20)  # warmup jobs pass the broker too
        return {"jobs_per_s": thr["jobs_per_s"], "p50": thr["latency_us"]["p50"],
                "p99": thr["latency_us"]["p99"], "lone_p50": lone["latency_us"]["p50"],
                "lone_p99": lone["latency_us"]["p99"],
                "broker_us_per_req": (c1 - c0) / counted * 1e6 if broker else None}
    finally:
        for p in reversed(procs):
            stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(SRC, "build"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=50000)
    ap.add_argument("--lone-jobs", type=int, default=5000)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--policy", default="lru")
    a = ap.parse_args()
    repo = tempfile.mkdtemp(prefix="broker-bench.")
    os.makedirs(os.path.join(repo, "small", "1"))
    quern_model.write_mlp(os.path.join(repo, "small", "1", "model.safetensors"),
                          quern_model.random_mlp(DIMS, ACTS, 1))
    configs = ["direct", "broker-1", "broker-2", "broker-c1"]
    runs = {c: [] for c in configs}
    for rep in range(a.repeats):
        for c in configs:
            r = run_config(a.build, repo, c, a.jobs, a.lone_jobs, a.window, a.policy)
            runs[c].append(r)
            print("# repeat %d %s %s" % (rep + 1, c, json.dumps(r)), flush=True)
    med = {c: {k: (statistics.median([r[k] for r in runs[c]]) if runs[c][0][k] is not None else None)
               for k in runs[c][0]} for c in configs}
    print("\n| config | window %d jobs/s | p50 µs | p99 µs | lone p50 µs | lone p99 µs | broker CPU µs/req |"
          % a.window)
    print("| --- | --: | --: | --: | --: | --: | --: |")
    for c in configs:
        m = med[c]
        bc = "%.2f" % m["broker_us_per_req"] if m["broker_us_per_req"] is not None else "-"
        print("| %s | %.0f | %.1f | %.1f | %.1f | %.1f | %s |" % (c, m["jobs_per_s"], m["p50"], m["p99"],
                                                              m["lone_p50"], m["lone_p99"], bc))
    d = med["direct"]
    print()
    print("- broker-1 / direct throughput: %.0f%% (aim >= 80%%)" % (100 * med["broker-1"]["jobs_per_s"] / d["jobs_per_s"]))
    print("- broker-2 / direct throughput: %.0f%%" % (100 * med["broker-2"]["jobs_per_s"] / d["jobs_per_s"]))
    print("- credit 64 / credit 1 through the broker: %.2fx" % (med["broker-1"]["jobs_per_s"] / med["broker-c1"]["jobs_per_s"]))
    print("- the broker adds %.1f µs to a lone request's p50 (aim <= 50)" % (med["broker-1"]["lone_p50"] - d["lone_p50"]))


if __name__ == "__main__":
    main()
