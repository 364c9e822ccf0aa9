"""The worker serves compressed models transparently: int8, fp16, CSR (f32
and int8 values) and a model mixing representations per layer, answered
through the same contract, checked against the numpy reference of the same
(dequantized) weights, and through `quern compress` output."""
import os
import subprocess

import numpy as np

from qn_harness import CLI, Client, Runner, Worker, make_repo, outputs, predict_job, quern_model


def put(repo, name, layers, reprs, prune=0.0):
    d = os.path.join(repo, name, "1")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.safetensors")
    quern_model.write_mlp(path, layers, reprs=reprs, prune=prune)
    return quern_model.load_mlp(path)  # what the file computes, expanded to f32


def test_serving(ep, refs):
    c = Client(ep)
    rng = np.random.default_rng(7)
    for name, (ref, tol) in refs.items():
        cols = ref[0][0].shape[1]
        for rows in (1, 3, 64, 130):
            x = rng.standard_normal((rows, cols)).astype(np.float32)
            res = c.call(predict_job(name, name, x))
            assert res["status"] == "ok", (name, res)
            want = quern_model.forward(ref, x)
            y = outputs(res)
            err = np.abs(y - want).max() / (np.abs(want).max() + 1e-6)
            assert err <= tol, (name, rows, err)
    c.close()


if __name__ == "__main__":
    base = quern_model.random_mlp([96, 200, 130, 10], ["relu", "relu", "softmax"], 5)
    repo = make_repo({})
    refs = {}
    # int8 quantizes activations dynamically too: relative error of a few 1e-3
    refs["i8"] = (put(repo, "i8", base, ["int8", "int8", "int8"]), 3e-2)
    refs["f16"] = (put(repo, "f16", base, ["f16", "f16", "f16"]), 1e-4)
    refs["csr"] = (put(repo, "csr", base, ["csr_f32", "csr_f32", "csr_f32"], prune=0.9), 1e-4)
    refs["csr8"] = (put(repo, "csr8", base, ["csr_int8", "csr_int8", "csr_int8"], prune=0.5), 1e-4)
    refs["mixed"] = (put(repo, "mixed", base, ["f16", "csr_f32", "f32"], prune=0.0), 1e-4)
    # quern compress output served as is
    src = os.path.join(repo, "src.safetensors")
    quern_model.write_mlp(src, base)
    os.makedirs(os.path.join(repo, "cli8", "1"))
    out = os.path.join(repo, "cli8", "1", "model.safetensors")
    p = subprocess.run([CLI, "compress", src, out, "--int8"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    refs["cli8"] = (quern_model.load_mlp(out), 3e-2)
    r = Runner()
    for args in ([], ["--direct-max-flops", "0", "--direct-idle-rows", "0"]):
        with Worker(repo, *args) as w:
            r.run(test_serving, w.endpoint, refs)
            assert "not runnable" not in w.log(), w.log()
            assert w.stop() == 0
    r.done()
