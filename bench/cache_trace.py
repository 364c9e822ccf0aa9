"""Issue 4: the cache's policy seen through the real worker. Replays request
traces (each key = one distinct input) against quern-worker with a small
cache and counts `cached: true` answers:

  hot/scan: a hot set of half the cache's capacity, requested 5 times; a
            cold scan of 3x the capacity (each key once); the hot set again.
            LFU keeps the hot set through the scan (LRU would lose it).
  zipf:     Zipf(1.0) over 10x the capacity, hit ratio after a 10% warm-up.

The capacity C (entries the cache holds at steady state) is read from
`quern cache stats` after filling it. Requests go one at a time, through the
executor path (--direct-max-flops 0 --direct-idle-rows 0), which writes the
cache once per batch, so an entry is visible to the next request; the
numbers to compare are bench/cache_sim's for the same shapes.

usage: /usr/bin/python3 bench/cache_trace.py [--build build]
"""
import argparse
import os
import subprocess
import sys
import tempfile

import msgpack
import numpy as np
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import zmq_compare as zc  # noqa: E402

COLS, OUT = 16, 256


def lru_hits(trace, cap, count_from=0):
    """Hits of an exact LRU of cap entries on the same trace (for comparison)."""
    from collections import OrderedDict
    c, hits = OrderedDict(), 0
    for i, k in enumerate(trace):
        if k in c:
            c.move_to_end(k)
            hits += i >= count_from
        else:
            c[k] = 1
            if len(c) > cap:
                c.popitem(last=False)
    return hits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(zc.SRC, "build"))
    ap.add_argument("--cache-mb", type=int, default=2)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="qn-cachetrace.")
    repo, cdir = os.path.join(tmp, "repo"), os.path.join(tmp, "cache")
    os.makedirs(os.path.join(repo, "m", "1"))
    zc.quern_model.write_mlp(os.path.join(repo, "m", "1", "model.safetensors"),
                             zc.quern_model.random_mlp([COLS, 32, OUT], ["relu", "none"], 1))
    ep = "tcp://127.0.0.1:5861"
    w = zc.start([os.path.join(a.build, "quern-worker"), "--model-repo", repo, "--zmq-bind", ep,
                  "--cache-dir", cdir, "--cache-size", str(a.cache_mb), "--direct-max-flops", "0",
                  "--direct-idle-rows", "0", "--threads", "1"], "worker: ready")
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.connect(ep)

    def ask(key):
        x = (np.arange(COLS, dtype=np.float32) + np.float32(key)).reshape(1, COLS)
        s.send(msgpack.packb({"v": 1, "id": int(key), "type": "predict", "model": "m",
                              "inputs": {"dtype": "f32", "shape": [1, COLS], "data": x.tobytes()}}))
        r = msgpack.unpackb(s.recv())
        assert r["status"] == "ok", r
        return r["cached"]

    def stats():
        out = subprocess.run([os.path.join(a.build, "quern"), "cache", "stats", cdir],
                             capture_output=True, text=True).stdout
        return dict(l.split(None, 1) for l in out.splitlines() if l.strip())

    try:
        base = 10_000_000
        for k in range(4000):  # fill past the high watermark
            ask(base + k)
        cap = int(stats()["entries"])
        print("cache %d MiB holds C = %d entries at steady state" % (a.cache_mb, cap))

        rng = np.random.default_rng(1)
        hot = np.arange(cap // 2) + 1_000_000
        seq = [k for _ in range(5) for k in rng.permutation(hot)] + \
              [2_000_000 + k for k in range(3 * cap)]
        tail = list(rng.permutation(hot))
        for k in seq:
            ask(k)
        final = [ask(k) for k in tail]
        hs = sum(final) / len(final)
        lru = lru_hits(seq + tail, cap, len(seq)) / len(tail)
        print("hot/scan: hot set %d, scan %d: hot-set hit ratio after the scan: quern %.4f, "
              "exact LRU of the same size %.4f" % (len(hot), 3 * cap, hs, lru))

        keys = 10 * cap
        n = 20 * cap
        ranks = np.arange(1, keys + 1, dtype=np.float64)
        p = 1.0 / ranks
        p /= p.sum()
        trace = rng.choice(keys, size=n, p=p) + 3_000_000
        warm = n // 10
        hits = 0
        for i, k in enumerate(trace):
            c = ask(k)
            if i >= warm:
                hits += c
        zr = hits / (n - warm)
        lru = lru_hits(list(trace), cap, warm) / (n - warm)
        print("zipf 1.0 over %d keys (cache = 10%% of keys), %d requests: hit ratio quern %.4f, "
              "exact LRU of the same size %.4f" % (keys, n, zr, lru))
        st = stats()
        print("stats: entries %s, evictions %s, hits %s, misses %s" % (st["entries"], st["evictions"],
                                                                      st["hits"], st["misses"]))
    finally:
        s.close(0)
        zc.stop(w)


if __name__ == "__main__":
    main()
