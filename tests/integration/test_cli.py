"""The quern CLI against real files and a real worker: inspect, predict (.npy
and CSV in, a table out, error results and timeouts), bench."""
import json
import os
import subprocess

import numpy as np

from qn_harness import BUILD, CLI, Runner, Worker, make_repo, quern_model

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


def test_bench(ep):
    rc, out, err = cli("bench", "--zmq", ep, "--model", "m", "--cols", "6", "--jobs", "2000",
                       "--window", "32", "--warmup", "100", "--json")
    assert rc == 0, (out, err)
    d = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
    assert d["ok"] == 2000 and d["error"] == 0 and d["complete"], d
    assert d["jobs_per_s"] > 0 and d["latency_us"]["p50"] > 0


if __name__ == "__main__":
    repo = make_repo({"m": {1: LAYERS}})
    r = Runner()
    r.run(test_usage)
    r.run(test_inspect, repo)
    with Worker(repo) as w:
        r.run(test_predict_npy_and_csv, w.endpoint, repo)
        r.run(test_predict_errors, w.endpoint, repo)
        r.run(test_bench, w.endpoint)
        assert w.stop() == 0
    r.done()
