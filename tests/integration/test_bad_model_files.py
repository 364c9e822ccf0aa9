"""Damaged model files dropped into a served repository (issue 17): a
safetensors header whose __metadata__ is malformed after a valid tensor
entry once made the parser report success with no file, so `quern inspect`
and the worker's registry thread died with SIGSEGV. Each shape must be a
clean error: inspect exits 1 with a reason, the worker logs the version as
skipped with the reason, keeps serving the previous version and stays up."""
import json
import os
import struct
import subprocess

import numpy as np

from qn_harness import CLI, Client, Runner, Worker, make_repo, outputs, predict_job, quern_model

L1 = quern_model.random_mlp([4, 8, 2], ["relu", "none"], 1)
X = np.arange(8, dtype=np.float32).reshape(2, 4) / 7


def raw_file(path, header, data):
    """A safetensors file with exactly this header (json.dumps of a dict kept
    in insertion order, so __metadata__ can come after a tensor entry)."""
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
    os.replace(tmp, path)


def shapes():
    """(name, header, data) for each damaged metadata, after a valid tensor."""
    w = np.ones((2, 4), dtype=np.float32).tobytes()
    t = {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, len(w)]}
    layers = json.dumps([{"type": "dense", "weight": "w", "bias": None, "activation": "none"}])
    return [
        ("format is a number", {"w": t, "__metadata__": {"format": 1, "layers": layers}}, w),
        ("format is null", {"w": t, "__metadata__": {"format": None, "layers": layers}}, w),
        ("layers is an array", {"w": t, "__metadata__": {"format": "quern.mlp.v1",
                                                          "layers": json.loads(layers)}}, w),
        ("metadata is an array", {"w": t, "__metadata__": ["quern.mlp.v1"]}, w),
        ("metadata is a number", {"w": t, "__metadata__": 7}, w),
    ]


def test_inspect(tmp):
    for name, header, data in shapes():
        path = os.path.join(tmp, "bad.safetensors")
        raw_file(path, header, data)
        p = subprocess.run([CLI, "inspect", path], capture_output=True, text=True, timeout=30)
        assert p.returncode == 1, (name, p.returncode, p.stdout, p.stderr)
        assert "metadata" in p.stderr.lower() and "not" in p.stderr, (name, p.stderr)


def test_worker_refuses_and_keeps_serving(w, repo):
    c = Client(w.endpoint)
    res = c.call(predict_job("v1", "m", X))
    assert res["status"] == "ok" and res["version"] == 1, res
    ver = 2
    for name, header, data in shapes():
        mark = len(w.lines)
        raw_file(os.path.join(repo, "m", str(ver), "model.safetensors"), header, data)
        # the reason is logged against this version and file...
        w.wait_for(r"m v%d: skipped, .*metadata.*not.*model\.safetensors" % ver, 5, start=mark)
        assert w.proc.poll() is None, "worker died on %s" % name
        # ...and version 1 keeps serving unpinned jobs, while the bad one is unknown
        res = c.call(predict_job("after-%d" % ver, "m", X))
        assert res["status"] == "ok" and res["version"] == 1, (name, res)
        np.testing.assert_allclose(outputs(res), quern_model.forward(L1, X), rtol=2e-4, atol=2e-5)
        res = c.call(predict_job("pin-%d" % ver, "m", X, version=ver))
        assert res["status"] == "error" and res["error"]["code"] == "unknown_version", (name, res)
        ver += 1
    c.close()


def test_debug_log_names_the_file(repo):
    """With debug logging, the file is named before it is parsed, so a crash
    report would end with it."""
    with Worker(repo, "--poll-ms", "100", env={"QN_LOG": "debug"}) as w:
        w.wait_for(r"m v1: loading .*m/1/model\.safetensors", 5)
        assert w.stop() == 0


if __name__ == "__main__":
    repo = make_repo({"m": {1: L1}})
    r = Runner()
    r.run(test_inspect, repo)
    with Worker(repo, "--poll-ms", "100") as w:
        r.run(test_worker_refuses_and_keeps_serving, w, repo)
        assert w.stop() == 0
    r.run(test_debug_log_names_the_file, make_repo({"m": {1: L1}}))
    r.done()
