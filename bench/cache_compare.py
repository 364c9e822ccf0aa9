"""Issue 4's cache benchmarks through the real worker over ZeroMQ, one run:
hit path vs miss path on the wide model (256->1024->1024->16), hit jobs/s
on the small model vs the transport's ceiling (bench/ceiling_router).

A "hit" run uses a pool of 256 distinct inputs (warmup fills the cache); a
"miss" run uses as many distinct inputs as jobs, so every job computes and
is inserted. Interleaved repeats, medians.

usage: /usr/bin/python3 bench/cache_compare.py [--build build] [--repeats 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import zmq_compare as zc  # noqa: E402


def bench(build, ep, model, cols, jobs, pool, warmup, seed=1):
    """One `quern bench` run, 256 in flight; returns its JSON line."""
    cmd = [os.path.join(build, "quern"), "bench", "--zmq", ep, "--model", model, "--cols", str(cols),
           "--jobs", str(jobs), "--window", "256", "--pool", str(pool), "--warmup", str(warmup),
           "--seed", str(seed), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not line:
        raise RuntimeError(out.stdout + out.stderr)
    return json.loads(line[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(zc.SRC, "build"))
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="qn-cachebench.")
    repo = os.path.join(tmp, "repo")
    for name, (dims, acts) in zc.MODELS.items():
        os.makedirs(os.path.join(repo, name, "1"))
        zc.quern_model.write_mlp(os.path.join(repo, name, "1", "model.safetensors"),
                                 zc.quern_model.random_mlp(dims, acts, 1))
    ceil_ep, q_ep = "tcp://127.0.0.1:5801", "tcp://127.0.0.1:5802"
    ceil = zc.start([os.path.join(a.build, "bench", "ceiling_router"), ceil_ep], "listening")
    q = zc.start([os.path.join(a.build, "quern-worker"), "--model-repo", repo, "--zmq-bind", q_ep,
                  "--cache-dir", os.path.join(tmp, "cache"), "--cache-size", "1024"], "worker: ready")
    res = {}
    try:
        for rep in range(a.repeats):
            runs = [("wide miss", q_ep, "wide", 256, 20000, 20000, 500),
                    ("wide hit", q_ep, "wide", 256, 100000, 256, 2000),
                    ("small hit", q_ep, "small", 64, 100000, 256, 2000),
                    ("ceiling", ceil_ep, "m", 64, 100000, 256, 2000)]
            for (label, ep, model, cols, jobs, pool, warm) in runs:
                # fresh seeds for miss runs so that no input was seen before
                r = bench(a.build, ep, model, cols, jobs, pool, warm, 1000 + rep if "miss" in label else 1)
                res.setdefault(label, []).append(r)
                print("# rep %d %s: %.0f jobs/s p50 %.1f us" % (rep, label, r["jobs_per_s"],
                      r["latency_us"]["p50"]), file=sys.stderr, flush=True)
    finally:
        zc.stop(q)
        zc.stop(ceil)
    med = {k: statistics.median(r["jobs_per_s"] for r in v) for k, v in res.items()}
    print("| run | jobs/s (median) | p50 µs | runs |")
    print("| --- | --: | --: | --- |")
    for k, v in res.items():
        print("| %s | %.0f | %.1f | %s |" % (k, med[k], statistics.median(r["latency_us"]["p50"] for r in v),
                                            ", ".join("%.0f" % r["jobs_per_s"] for r in v)))
    print()
    print("- wide: hit path / miss path = %.2fx" % (med["wide hit"] / med["wide miss"]))
    print("- small hits / ceiling = %.0f%%" % (100 * med["small hit"] / med["ceiling"]))


if __name__ == "__main__":
    main()
