"""Issue 5 through the worker: the 256->1024->1024->16 relu model served as
f32, int8, fp16 and 90%-pruned CSR by the same quern-worker, same run,
interleaved repeats: jobs/s with 256 single-row jobs in flight, and p50 with
one in flight.

usage: /usr/bin/python3 bench/compress_compare.py [--build build] [--repeats 3] [--quern-args ...]
"""
import argparse
import os
import shlex
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import zmq_compare as zc  # noqa: E402

VARIANTS = {"f32": (None, 0.0), "int8": (["int8"] * 3, 0.0), "f16": (["f16"] * 3, 0.0),
            "csr90": (["csr_f32", "csr_f32", "f32"], 0.9)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(zc.SRC, "build"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quern-args", default="")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="qn-compressbench.")
    repo = os.path.join(tmp, "repo")
    base = zc.quern_model.random_mlp([256, 1024, 1024, 16], ["relu", "relu", "none"], 1)
    for name, (reprs, prune) in VARIANTS.items():
        os.makedirs(os.path.join(repo, name, "1"))
        zc.quern_model.write_mlp(os.path.join(repo, name, "1", "model.safetensors"), base, reprs=reprs,
                                 prune=prune)
    ep = "tcp://127.0.0.1:5831"
    q = zc.start([os.path.join(a.build, "quern-worker"), "--model-repo", repo, "--zmq-bind", ep]
                 + shlex.split(a.quern_args), "worker: ready")
    res = {}
    try:
        for rep in range(a.repeats):
            for name in VARIANTS:
                for window, jobs in ((256, 30000), (1, 3000)):
                    r = zc.bench(a.build, ep, name, 256, jobs, window)
                    res.setdefault((name, window), []).append(r)
                    print("# rep %d %s w=%d: %.0f jobs/s p50 %.1f" % (rep, name, window, r["jobs_per_s"],
                          r["latency_us"]["p50"]), file=sys.stderr, flush=True)
    finally:
        zc.stop(q)
    print("| model | window | jobs/s (median) | p50 µs | p99 µs | runs (jobs/s) |")
    print("| --- | --: | --: | --: | --: | --- |")
    for (name, window), rs in res.items():
        print("| %s | %d | %.0f | %.1f | %.1f | %s |" % (
            name, window, statistics.median(r["jobs_per_s"] for r in rs),
            statistics.median(r["latency_us"]["p50"] for r in rs),
            statistics.median(r["latency_us"]["p99"] for r in rs), ", ".join("%.0f" % r["jobs_per_s"] for r in rs)))
    jps = {k: statistics.median(r["jobs_per_s"] for r in v) for k, v in res.items()}
    p50 = {k: statistics.median(r["latency_us"]["p50"] for r in v) for k, v in res.items()}
    print()
    for name in ("int8", "f16", "csr90"):
        print("- %s vs f32: jobs/s %.2fx at window 256; p50 %.2fx at window 1" % (
            name, jps[(name, 256)] / jps[("f32", 256)], p50[(name, 1)] / p50[("f32", 1)]))


if __name__ == "__main__":
    main()
