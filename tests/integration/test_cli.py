"""The quern CLI against real files and a real worker: inspect, predict (.npy
and CSV in, a table out or --json, error results and timeouts), bench (errors
counted apart, --cols from a models job), decode, compress writing only what
passed its checks, --help everywhere, quiet logs, make install; and the
worker's start-up checks (a missing repository, bad -X, an empty one) and
error messages a user meets first (JSON sent as a job, out-of-range ints)."""
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time

import msgpack
import numpy as np

from qn_harness import BUILD, CLI, SRC, WORKER, Client, Runner, Worker, make_repo, quern_model

LAYERS = quern_model.random_mlp([6, 12, 4], ["relu", "softmax"], 1)


def cli(*args, timeout=60):
    p = subprocess.run([CLI] + list(args), capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def test_usage():
    rc, out, err = cli()
    assert rc == 2 and "inspect" in out + err and "predict" in out + err and "bench" in out + err
    rc, out, err = cli("nosuchcommand")
    assert rc == 2


def test_inspect(repo):
    path = os.path.join(repo, "m", "1", "model.safetensors")
    rc, out, err = cli("inspect", path)
    assert rc == 0, err
    assert "quern.mlp.v1" in out and "relu" in out and "softmax" in out, out
    assert "parameters:" in out and str(6 * 12 + 12 + 12 * 4 + 4) in out, out
    bad = os.path.join(repo, "bad.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\xff" * 20)
    rc, out, err = cli("inspect", bad)
    assert rc == 1 and err.strip(), (rc, out, err)


def test_predict_npy_and_csv(ep, repo):
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    npy = os.path.join(repo, "x.npy")
    np.save(npy, x)
    out_npy = os.path.join(repo, "y.npy")
    rc, out, err = cli("predict", "--zmq", ep, "--model", "m", "--input", npy, "--output", out_npy)
    assert rc == 0, (out, err)
    assert "ok" in out
    y = np.load(out_npy)
    np.testing.assert_allclose(y, quern_model.forward(LAYERS, x), rtol=2e-4, atol=2e-5)
    csv = os.path.join(repo, "x.csv")
    with open(csv, "w") as f:
        f.write("a,b,c,d,e,f\n")
        for row in x.astype(np.float64):
            f.write(",".join(repr(float(v)) for v in row) + "\n")
    rc, out, err = cli("predict", "--zmq", ep, "--model", "m", "--input", csv, "--output", out_npy)
    assert rc == 0, (out, err)
    np.testing.assert_allclose(np.load(out_npy), quern_model.forward(LAYERS, x), rtol=2e-4, atol=2e-5)


def test_predict_errors(ep, repo):
    npy = os.path.join(repo, "x5.npy")
    np.save(npy, np.ones((1, 5), np.float32))
    rc, out, err = cli("predict", "--zmq", ep, "--model", "m", "--input", npy)
    assert rc == 1 and "shape_mismatch" in out + err, (out, err)
    rc, out, err = cli("predict", "--zmq", ep, "--model", "nope", "--input", npy)
    assert rc == 1 and "unknown_model" in out + err, (out, err)
    rc, out, err = cli("predict", "--zmq", "tcp://127.0.0.1:1", "--model", "m", "--input", npy,
                       "--timeout-ms", "300")
    assert rc == 1, (out, err)


def bench_json(out):
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


def test_bench(ep):
    rc, out, err = cli("bench", "--zmq", ep, "--model", "m", "--cols", "6", "--jobs", "2000",
                       "--window", "32", "--warmup", "100", "--json")
    assert rc == 0, (out, err)
    d = bench_json(out)
    assert d["ok"] == 2000 and d["error"] == 0 and d["failed"] == 0 and d["complete"], d
    assert d["jobs_per_s"] > 0 and d["latency_us"]["p50"] > 0
    # without --cols the width comes from the worker (a models job)
    rc, out, err = cli("bench", "--zmq", ep, "--model", "m", "--jobs", "200", "--warmup", "0", "--json")
    assert rc == 0, (out, err)
    d = bench_json(out)
    assert d["cols"] == 6 and d["ok"] == 200, d
    rc, out, err = cli("bench", "--zmq", ep, "--model", "nope", "--jobs", "10", "--warmup", "0")
    assert rc == 1 and "unknown_model" in err and "--cols" in err, (out, err)


def test_bench_counts_errors_apart(ep):
    """1000 shape_mismatch answers are not throughput: exit 1, counted per
    code, jobs/s over ok answers (none)."""
    rc, out, err = cli("bench", "--zmq", ep, "--model", "m", "--cols", "5", "--jobs", "1000",
                       "--warmup", "0", "--json")
    assert rc == 1, (rc, out, err)
    d = bench_json(out)
    assert d["answered"] == 1000 and d["ok"] == 0 and d["failed"] == 1000, d
    assert d["codes"] == {"shape_mismatch": 1000}, d
    assert d["jobs_per_s"] == 0 and d["latency_us"]["p50"] == 0, d
    assert "1000 of 1000" in err and "shape_mismatch 1000" in err, err


def test_models_job(ep):
    c = Client(ep)
    r = c.call({"v": 1, "id": "meta", "type": "models"})
    assert r["status"] == "ok" and r["id"] == "meta" and "outputs" not in r, r
    assert r["models"] == [{"name": "m", "latest": 1, "versions": [
        {"version": 1, "input_dim": 6, "output_dim": 4, "repr": "f32"}]}], r
    r = c.call({"v": 1, "id": 5, "type": "models", "model": "nope"})
    assert r["status"] == "error" and r["error"]["code"] == "unknown_model", r
    c.close()


def test_predict_json(ep, repo):
    x = np.random.default_rng(3).standard_normal((2, 6)).astype(np.float32)
    path = os.path.join(repo, "xj.npy")
    np.save(path, x)
    rc, out, err = cli("predict", "--zmq", ep, "--model", "m", "--input", path, "--json", "--id", "9")
    assert rc == 0, (out, err)
    lines = out.splitlines()
    assert len(lines) == 1, out
    d = json.loads(lines[0])
    assert d["status"] == "ok" and d["id"] == 9 and d["model"] == "m" and d["version"] == 1, d
    np.testing.assert_allclose(np.array(d["outputs"], np.float32), quern_model.forward(LAYERS, x),
                               rtol=2e-4, atol=2e-5)
    np.save(path, x[:, :5])
    rc, out, err = cli("predict", "--zmq", ep, "--model", "m", "--input", path, "--json")
    assert rc == 1, (out, err)
    d = json.loads(out)
    assert d["status"] == "error" and d["error"]["code"] == "shape_mismatch", d


def decode(data, *args):
    p = subprocess.run([CLI, "decode"] + list(args), input=data, capture_output=True, timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_decode():
    y = np.array([[0.25, -1.5, 3.0], [float("nan"), float("inf"), 0.1]], np.float32)
    msgs = [
        {"v": 1, "id": "a", "type": "result", "status": "ok", "model": "m", "version": 2,
         "outputs": {"dtype": "f32", "shape": [2, 3], "data": y.tobytes()}, "cached": False},
        {"v": 1, "id": 2 ** 64 - 1, "type": "result", "status": "error",
         "error": {"code": "bad_job", "message": "line\nbreak"}},
        {"raw": b"\n\n\x00", 7: None, "row": {"dtype": "f32", "shape": [2], "data": y[0, :2].tobytes()}},
    ]
    packed = [msgpack.packb(m, use_bin_type=True) for m in msgs]

    def check(out):
        ls = out.splitlines()
        assert len(ls) == 3, out
        a, b, c = (json.loads(l) for l in ls)
        assert a["outputs"] == [[0.25, -1.5, 3.0], ["NaN", "Infinity", 0.1]], a
        assert a["version"] == 2 and a["cached"] is False, a
        assert b["id"] == str(2 ** 64 - 1) and b["error"]["message"] == "line\nbreak", b
        assert c == {"raw": "CgoA", "7": None, "row": [0.25, -1.5]}, c

    # back to back; with kcat's default newline after each; length-prefixed
    for data, args in ((b"".join(packed), ()), (b"".join(p + b"\n" for p in packed), ()),
                       (b"".join(struct.pack(">i", len(p)) + p for p in packed) + struct.pack(">i", -1),
                        ("--length-prefixed",))):
        rc, out, err = decode(data, *args)
        assert rc == 0, (args, out, err)
        check(out)
    # garbage after a good message: the good one printed, then an error naming the offset
    rc, out, err = decode(packed[0] + b"\xc1")
    assert rc == 1 and len(out.splitlines()) == 1 and "byte %d" % len(packed[0]) in err, (out, err)
    rc, out, err = decode(packed[0][:-3])
    assert rc == 1 and out == "" and "truncated" in err, (out, err)
    # length-prefixed: a bad message costs only itself
    bad = b"\xc1\x00"
    rc, out, err = decode(struct.pack(">i", 2) + bad + struct.pack(">i", len(packed[1])) + packed[1],
                          "--length-prefixed")
    assert rc == 1 and len(out.splitlines()) == 1 and "bad_job" in out, (out, err)
    rc, out, err = decode(b"", "--nope")
    assert rc == 2


def test_decode_streams():
    """A message is printed as soon as it is whole, not at end of input (a
    kcat that keeps consuming never closes the pipe)."""
    p = subprocess.Popen([CLI, "decode"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        m = msgpack.packb({"v": 1, "id": "s"}, use_bin_type=True)
        p.stdin.write(m[:3])
        p.stdin.flush()
        time.sleep(0.2)
        p.stdin.write(m[3:] + b"\n")
        p.stdin.flush()
        line = p.stdout.readline()
        assert json.loads(line) == {"v": 1, "id": "s"}, line
    finally:
        p.stdin.close()
        p.wait(10)
    assert p.returncode == 0


def test_help_everywhere():
    rc, out, err = cli("--help")
    assert rc == 0
    cmds = [l.split()[1] for l in out.splitlines() if l.startswith("  quern ")]
    assert {"bench", "cache", "compress", "decode", "inspect", "predict"} <= set(cmds), cmds
    for c in cmds:
        for args in ([c, "--help"], ["help", c]):
            rc, out, err = cli(*args)
            assert rc == 0 and "usage: quern " + c in out, (args, rc, out, err)
    rc, out, err = cli("cache", "stats", "--help")
    assert rc == 0 and "usage: quern cache stats" in out and "no cache" not in out + err, (out, err)


def test_quiet_logs(repo, d):
    """Library INFO lines (kernel paths) stay out of a CLI's output unless -v."""
    src = os.path.join(repo, "m", "1", "model.safetensors")
    x = os.path.join(d, "q.npy")
    np.save(x, np.ones((2, 6), np.float32))
    out_path = os.path.join(d, "q.safetensors")
    rc, out, err = cli("compress", src, out_path, "--int8", "--eval", x)
    assert rc == 0 and "INFO" not in out + err, (out, err)
    rc, out, err = cli("-v", "compress", src, out_path, "--int8", "--eval", x)
    assert rc == 0 and "INFO" in err and "INFO" not in out, (out, err)
    rc, out, err = cli("compress", src, out_path, "--int8", "--eval", x, "-v")
    assert rc == 0 and "INFO" in err, (out, err)


def test_compress_writes_only_what_passed(ep, repo):
    """--eval with the wrong columns: nothing appears in the version
    directory (the watching worker never serves it); with the right ones
    the model appears whole, under its name only."""
    src = os.path.join(repo, "m", "1", "model.safetensors")
    vdir = os.path.join(repo, "m", "2")
    os.makedirs(vdir)
    x5 = os.path.join(repo, "x5e.npy")
    np.save(x5, np.ones((3, 5), np.float32))
    rc, out, err = cli("compress", src, os.path.join(vdir, "model.safetensors"), "--int8", "--eval", x5)
    assert rc == 1 and "5 columns" in err, (out, err)
    assert os.listdir(vdir) == [], os.listdir(vdir)
    labels = os.path.join(repo, "lab.npy")
    x6 = os.path.join(repo, "x6e.npy")
    np.save(x6, np.ones((3, 6), np.float32))
    np.save(labels, np.array([0, 1, 99], np.float32))  # 99: not a class of a 4-output model
    rc, out, err = cli("compress", src, os.path.join(vdir, "model.safetensors"), "--int8", "--eval", x6,
                       "--labels", labels)
    assert rc == 1 and "class index" in err, (out, err)
    assert os.listdir(vdir) == [], os.listdir(vdir)
    time.sleep(1.2)  # two rescans of the worker's repository
    c = Client(ep)
    r = c.call({"v": 1, "id": "v", "type": "models"})
    assert [v["version"] for v in r["models"][0]["versions"]] == [1], r
    rc, out, err = cli("compress", src, os.path.join(vdir, "model.safetensors"), "--int8", "--eval", x6)
    assert rc == 0, (out, err)
    assert os.listdir(vdir) == ["model.safetensors"], os.listdir(vdir)
    deadline = time.time() + 5
    while time.time() < deadline:
        r = c.call({"v": 1, "id": "v", "type": "models"})
        if r["models"][0]["latest"] == 2:
            break
        time.sleep(0.1)
    assert r["models"][0]["versions"][1] == {"version": 2, "input_dim": 6, "output_dim": 4,
                                             "repr": "int8"}, r
    c.close()
    shutil.rmtree(vdir)


def test_user_facing_errors(ep):
    c = Client(ep)
    r = c.call_raw(b'{"v":1,"id":"j","type":"predict","model":"m","inputs":[[1,2,3,4,5,6]]}')
    assert r["error"]["code"] == "bad_message" and "looks like JSON" in r["error"]["message"], r
    base = {"v": 1, "id": "j", "type": "predict", "model": "m", "inputs": [[1, 2, 3, 4, 5, 6]]}
    r = c.call(dict(base, version=2 ** 64 - 1))
    assert r["error"]["code"] == "bad_job" and "out of range" in r["error"]["message"], r
    r = c.call(dict(base, deadline_ms=2 ** 64 - 1))
    assert r["error"]["code"] == "bad_job" and "out of range" in r["error"]["message"], r
    c.close()


def run_worker(*args, timeout=20):
    p = subprocess.run([WORKER] + list(args), capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stderr


def test_worker_checks_config_first(repo, d):
    rc, err = run_worker("--model-repo", os.path.join(d, "no-such-repo"), "--zmq-bind", "tcp://127.0.0.1:*")
    assert rc == 1 and "no such directory" in err and "input/output" not in err, err
    f = os.path.join(d, "a-file")
    open(f, "w").close()
    rc, err = run_worker("--model-repo", f, "--zmq-bind", "tcp://127.0.0.1:*")
    assert rc == 1 and "not a directory" in err, err
    # a bad -X is refused before any model loads or socket binds
    for x in ("no.such.property=1", "consumer.fetch.wait.max.ms=abc", "quern.max.inflight=0"):
        rc, err = run_worker("--model-repo", repo, "--kafka-brokers", "mock", "--zmq-bind",
                             "tcp://127.0.0.1:*", "-X", x)
        assert rc == 1 and x.split("=")[0].split(".", 1)[-1] in err, (x, err)
        assert "listening" not in err and "registry" not in err and "mock cluster" not in err, (x, err)


def test_worker_warns_on_empty_repo(d):
    empty = tempfile.mkdtemp(dir=d)
    with Worker(empty) as w:
        m = w.wait_for(r"WARN .*no loadable model", 5)
        assert m
        assert w.stop() == 0


def test_install(d):
    prefix = os.path.join(d, "prefix")
    p = subprocess.run(["cmake", "--install", BUILD, "--prefix", prefix], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    bins = ["quern", "quern-worker"] + (["quern-broker"] if os.path.exists(os.path.join(BUILD, "quern-broker")) else [])
    for b in bins:
        path = os.path.join(prefix, "bin", b)
        assert os.access(path, os.X_OK), path
        q = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10)
        assert q.returncode == 0 and "usage" in q.stdout, q
    # the Makefile passes PREFIX through
    with open(os.path.join(SRC, "Makefile")) as f:
        mk = f.read()
    assert "PREFIX ?=" in mk and "--prefix $(PREFIX)" in mk


if __name__ == "__main__":
    repo = make_repo({"m": {1: LAYERS}})
    d = tempfile.mkdtemp(prefix="cli.", dir=os.path.join(BUILD, "tmp"))
    r = Runner()
    r.run(test_usage)
    r.run(test_help_everywhere)
    r.run(test_inspect, repo)
    r.run(test_decode)
    r.run(test_decode_streams)
    r.run(test_quiet_logs, repo, d)
    r.run(test_worker_checks_config_first, repo, d)
    r.run(test_worker_warns_on_empty_repo, d)
    r.run(test_install, d)
    with Worker(repo, "--poll-ms", "100") as w:
        r.run(test_predict_npy_and_csv, w.endpoint, repo)
        r.run(test_predict_errors, w.endpoint, repo)
        r.run(test_predict_json, w.endpoint, repo)
        r.run(test_models_job, w.endpoint)
        r.run(test_user_facing_errors, w.endpoint)
        r.run(test_bench, w.endpoint)
        r.run(test_bench_counts_errors_apart, w.endpoint)
        r.run(test_compress_writes_only_what_passed, w.endpoint, repo)
        assert w.stop() == 0
    r.done()
