"""A/B of the cache hit path through the real worker over ZeroMQ, one run:
two quern-workers (OLD, a binary copied aside, and NEW, this build), each
with its own --cache-dir, and the transport's ceiling (bench/ceiling_router)
up at once; 4 interleaved rounds of 200,000 hits of the small 64->128->10
model (a pool of 256 inputs, warmup 2000 fills the cache) against each,
old and new taking turns to go first.
Prints per-round jobs/s, medians and ratios to the ceiling, and each
worker's CPU time (user+sys, all its threads, from /proc) per job: on a
shared machine that moves less with the neighbours' load than jobs/s does.

usage: /usr/bin/python3 bench/cache_reader_ab.py OLD_WORKER [--build build] [--rounds 4]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import zmq_compare as zc  # noqa: E402
from cache_compare import bench  # noqa: E402


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old_worker")
    ap.add_argument("--build", default=os.path.join(zc.SRC, "build"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=200000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="quern_rdab_")
    repo = os.path.join(tmp, "repo")
    os.makedirs(os.path.join(repo, "small", "1"))
    subprocess.run(["/usr/bin/python3", os.path.join(zc.SRC, "tests", "tools", "quern_model.py"), "mlp",
                    os.path.join(repo, "small", "1", "model.safetensors"), "--dims", "64,128,10",
                    "--acts", "relu,softmax", "--seed", "1"], check=True)
    eps = {"ceiling": "tcp://127.0.0.1:5811", "old": "tcp://127.0.0.1:5812", "new": "tcp://127.0.0.1:5813"}
    pids = {}
    procs = [zc.start([os.path.join(a.build, "bench", "ceiling_router"), eps["ceiling"]], "listening")]
    try:
        for label, exe in (("old", a.old_worker), ("new", os.path.join(a.build, "quern-worker"))):
            procs.append(zc.start([exe, "--model-repo", repo, "--zmq-bind", eps[label], "--cache-dir",
                                   os.path.join(tmp, "cache-" + label), "--cache-size", "1024"],
                                  "worker: ready"))
            pids[label] = procs[-1].pid
        res, cpu = {}, {}
        for rnd in range(a.rounds):
            # who goes first alternates, so that neither always follows the ceiling
            for label in (("old", "new") if rnd % 2 == 0 else ("new", "old")) + ("ceiling",):
                model = "m" if label == "ceiling" else "small"
                c0 = cpu_s(pids[label]) if label in pids else 0.0
                r = bench(a.build, eps[label], model, 64, a.jobs, 256, 256, 2000)
                res.setdefault(label, []).append(r["jobs_per_s"])
                cpu_us = ""
                if label in pids:
                    us = (cpu_s(pids[label]) - c0) * 1e6 / (a.jobs + 2000)
                    cpu.setdefault(label, []).append(us)
                    cpu_us = " cpu %.2f us/job" % us
                print("# round %d %s: %.0f jobs/s p50 %.1f us%s" % (rnd, label, r["jobs_per_s"],
                      r["latency_us"]["p50"], cpu_us), file=sys.stderr, flush=True)
    finally:
        for p in procs:
            zc.stop(p)
    med = {k: statistics.median(v) for k, v in res.items()}
    print("| worker | jobs/s (median) | / ceiling | rounds |")
    print("| --- | --: | --: | --- |")
    for label in ("old", "new", "ceiling"):
        print("| %s | %s | %.2f | %s |" % (label, format(round(med[label]), ","), med[label] / med["ceiling"],
                                         ", ".join("%.0f" % x for x in res[label])))
    ratios = [n / o for n, o in zip(res["new"], res["old"])]
    print("- new / old per round: %s (median %.3f)" % (", ".join("%.3f" % x for x in ratios),
                                                       statistics.median(ratios)))
    for label in ("old", "new"):
        print("- %s worker CPU per job (user+sys, all threads): median %.2f us (%s)" % (
            label, statistics.median(cpu[label]), ", ".join("%.2f" % x for x in cpu[label])))


if __name__ == "__main__":
    main()
