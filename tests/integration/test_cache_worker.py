"""The result cache through the real worker: hits answered with cached: true
and bit-identical outputs, cache: false bypasses, versions never share
entries, two worker processes share one cache, entries survive restart and
kill -9 (every value served afterwards checked against recomputation), the
size bound holds on disk, a corrupt file is moved aside, an unusable
directory is a clear error at start."""
import glob
import os
import signal
import subprocess
import time

import numpy as np

from qn_harness import BUILD, CLI, WORKER, Client, Runner, Worker, make_repo, outputs, predict_job, put_version, quern_model, cache_stats

L1 = quern_model.random_mlp([32, 64, 8], ["relu", "softmax"], 1)
L2 = quern_model.random_mlp([32, 64, 8], ["tanh", "softmax"], 2)
BIG = quern_model.random_mlp([16, 32, 2048], ["relu", "none"], 3)  # 8 KiB per output row


def tmpdir(tag):
    base = os.path.join(BUILD, "tmp")
    os.makedirs(base, exist_ok=True)
    import tempfile
    return tempfile.mkdtemp(prefix=tag + ".", dir=base)


def call_until_cached(c, job, timeout=2.0):
    """The first call computes; a repeat is a hit at once (read-your-writes,
    test_read_your_writes checks that strictly); this tolerates a moment for
    the cases here that are about something else."""
    t0 = time.time()
    while True:
        res = c.call(job)
        assert res["status"] == "ok", res
        if res["cached"]:
            return res
        assert time.time() - t0 < timeout, "never became a hit"
        time.sleep(0.02)


def test_hits_and_semantics(repo, cdir):
    with Worker(repo, "--cache-dir", cdir, "--cache-size", "64") as w:
        c = Client(w.endpoint)
        x = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
        first = c.call(predict_job("a", "m", x))
        assert first["status"] == "ok" and first["cached"] is False, first
        hit = call_until_cached(c, predict_job("b", "m", x))
        assert hit["id"] == "b" and hit["version"] == 1 and hit["model"] == "m"
        assert outputs(hit).tobytes() == outputs(first).tobytes()  # bit-identical
        np.testing.assert_allclose(outputs(hit), quern_model.forward(L1, x), rtol=2e-4, atol=2e-5)
        # cache: false bypasses lookups
        for i in range(3):
            res = c.call(predict_job("n%d" % i, "m", x, cache=False))
            assert res["status"] == "ok" and res["cached"] is False, res
        # a job never cached with cache:false is never a hit later either
        y = x + 1
        for i in range(3):
            assert c.call(predict_job("f", "m", y, cache=False))["cached"] is False
        time.sleep(0.1)
        assert c.call(predict_job("g", "m", y))["cached"] is False
        # errors are never cached
        for i in range(2):
            res = c.call(predict_job("e", "m", np.ones((1, 31), np.float32)))
            assert res["status"] == "error", res
        # a new version never sees the old version's entries
        put_version(repo, "m", 2, L2)
        t0 = time.time()
        while True:
            res = c.call(predict_job("v2", "m", x))
            if res["version"] == 2:
                break
            assert time.time() - t0 < 3
            time.sleep(0.05)
        assert res["cached"] is False, res
        np.testing.assert_allclose(outputs(res), quern_model.forward(L2, x), rtol=2e-4, atol=2e-5)
        # pinned v1 still hits its own entry
        res = c.call(predict_job("pin", "m", x, version=1))
        assert res["cached"] is True and outputs(res).tobytes() == outputs(first).tobytes(), res
        c.close()
        assert w.stop() == 0
    os.remove(os.path.join(repo, "m", "2", "model.safetensors"))
    os.rmdir(os.path.join(repo, "m", "2"))
    rc = subprocess.run([CLI, "cache", "stats", cdir], capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    assert "hits" in rc.stdout and "entries" in rc.stdout, rc.stdout


def test_read_your_writes(repo):
    """Issue 9 item 7: the same job again, sent as soon as the first answer
    arrived, is a hit (bit-identical, cached: true), before any batched
    write could have landed; on the direct path and through the executors."""
    for extra in ([], ["--direct-max-flops", "0", "--threads", "2"]):
        cdir = tmpdir("cache-ryw")
        with Worker(repo, "--cache-dir", cdir, "--cache-size", "64", *extra) as w:
            c = Client(w.endpoint)
            rng = np.random.default_rng(7)
            for i in range(40):
                x = rng.standard_normal((1 + i % 4, 32)).astype(np.float32)
                first = c.call(predict_job("a%d" % i, "m", x))
                assert first["status"] == "ok" and first["cached"] is False, first
                again = c.call(predict_job("b%d" % i, "m", x))
                assert again["status"] == "ok" and again["cached"] is True, (extra, i, again)
                assert again["id"] == "b%d" % i
                assert outputs(again).tobytes() == outputs(first).tobytes()
            c.close()
            assert w.stop() == 0
        # and the batched writes did land
        assert int(cache_stats(cdir)["entries"]) == 40, cache_stats(cdir)


def test_two_workers_share(repo):
    cdir = tmpdir("cache-share")
    with Worker(repo, "--cache-dir", cdir, "--cache-size", "64") as a, \
            Worker(repo, "--cache-dir", cdir, "--cache-size", "64") as b:
        ca, cb = Client(a.endpoint), Client(b.endpoint)
        xs = np.random.default_rng(2).standard_normal((50, 32)).astype(np.float32)
        computed = {}
        for i in range(50):
            res = ca.call(predict_job(i, "m", xs[i:i + 1]))
            assert res["cached"] is False
            computed[i] = outputs(res).tobytes()
        time.sleep(0.2)  # a's tick has flushed
        hits = 0
        for i in range(50):
            res = cb.call(predict_job(i, "m", xs[i:i + 1]))
            assert outputs(res).tobytes() == computed[i]
            hits += res["cached"]
        assert hits == 50, hits
        ca.close()
        cb.close()
        assert a.stop() == 0 and b.stop() == 0
    # persistence across restart
    with Worker(repo, "--cache-dir", cdir, "--cache-size", "64") as w:
        c = Client(w.endpoint)
        res = c.call(predict_job(0, "m", xs[0:1]))
        assert res["cached"] is True and outputs(res).tobytes() == computed[0]
        c.close()
        assert w.stop() == 0


def test_kill9_during_writes(repo):
    cdir = tmpdir("cache-kill")
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((6000, 32)).astype(np.float32)
    w = Worker(repo, "--cache-dir", cdir, "--cache-size", "64", "--threads", "2",
               "--direct-max-flops", "0")
    c = Client(w.endpoint, timeout_ms=20000)
    for i in range(len(xs)):
        c.send(predict_job(i, "m", xs[i:i + 1]))
    for _ in range(1500):
        c.recv()
    w.proc.send_signal(signal.SIGKILL)  # mid-stream: writes in flight
    w.proc.wait()
    c.close()
    ref = quern_model.forward(L1, xs)
    with Worker(repo, "--cache-dir", cdir, "--cache-size", "64") as w2:
        c = Client(w2.endpoint, timeout_ms=20000)
        hits = 0
        for i in range(0, len(xs), 3):
            c.send(predict_job(i, "m", xs[i:i + 1]))
        for _ in range(0, len(xs), 3):
            res = c.recv()
            assert res["status"] == "ok", res
            np.testing.assert_allclose(outputs(res)[0], ref[res["id"]], rtol=2e-4, atol=2e-5)
            hits += res["cached"]
        assert hits > 0, "nothing survived the kill"
        c.close()
        assert w2.stop() == 0


def test_size_bound_on_disk():
    repo = make_repo({"big": {1: BIG}})
    cdir = tmpdir("cache-bound")
    size_mb = 4
    with Worker(repo, "--cache-dir", cdir, "--cache-size", str(size_mb), "--threads", "2") as w:
        c = Client(w.endpoint, timeout_ms=20000)
        rng = np.random.default_rng(4)
        # 3000 unique entries of 8 KiB = ~24 MiB offered to a 4 MiB cache
        n = 3000
        for i in range(n):
            c.send(predict_job(i, "big", rng.standard_normal((1, 16)).astype(np.float32)))
        for _ in range(n):
            assert c.recv()["status"] == "ok"
        time.sleep(0.3)
        c.close()
        asan = w.sanitized()
        assert w.stop() == 0
        if "MDB_MAP_FULL" in w.log():
            # The headroom above the high watermark covers eight write txns of
            # pages pinned by readers; a reader descheduled for long can pin
            # more. Seen only under AddressSanitizer with other tests running
            # (every job still answered, writes paused for a second).
            assert asan, w.log()[-3000:]
            print("   AddressSanitizer build: the map filled once (writes paused, serving went on)")
    du = subprocess.run(["du", "-sk", os.path.join(cdir, "data.mdb")], capture_output=True, text=True)
    kb = int(du.stdout.split()[0])
    assert kb <= size_mb * 1024, (kb, size_mb)
    stats = cache_stats(cdir)
    assert int(stats["evictions"]) > 0 and int(stats["write_failures"]) == 0, stats


def test_corrupt_file_moved_aside(repo):
    cdir = tmpdir("cache-corrupt")
    with open(os.path.join(cdir, "data.mdb"), "wb") as f:
        f.write(os.urandom(100000))
    with Worker(repo, "--cache-dir", cdir, "--cache-size", "16") as w:
        c = Client(w.endpoint)
        x = np.ones((1, 32), np.float32)
        assert c.call(predict_job(1, "m", x))["status"] == "ok"
        call_until_cached(c, predict_job(2, "m", x))
        c.close()
        assert w.stop() == 0
    assert glob.glob(os.path.join(cdir, "data.mdb.corrupt-*")), os.listdir(cdir)


def test_unusable_dir(repo):
    p = subprocess.run([WORKER, "--model-repo", repo, "--zmq-bind", "tcp://127.0.0.1:*",
                        "--cache-dir", "/proc/self/quern-cache-here"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 1 and "cache" in p.stderr, (p.returncode, p.stderr)


if __name__ == "__main__":
    repo = make_repo({"m": {1: L1}})
    r = Runner()
    r.run(test_hits_and_semantics, repo, tmpdir("cache"))
    r.run(test_read_your_writes, repo)
    r.run(test_two_workers_share, repo)
    r.run(test_kill9_during_writes, repo)
    r.run(test_size_bound_on_disk)
    r.run(test_corrupt_file_moved_aside, repo)
    r.run(test_unusable_dir, repo)
    r.done()
