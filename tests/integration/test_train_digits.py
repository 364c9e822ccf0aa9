"""`quern train` (the CLI, plain-lines mode) over ZeroMQ trains a digits
classifier from init on sklearn's digits through a real worker, which then
serves the new version: >= 95% accuracy on the held-out test split."""
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qn_harness import CLI, Client, Runner, Worker, make_repo, outputs, tensor  # noqa: E402


def test_digits_from_init():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.float32).reshape(-1, 1)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    repo = make_repo({})
    tmp = os.path.join(repo, "..", os.path.basename(repo) + ".data")
    os.makedirs(tmp, exist_ok=True)
    for n, a in (("x", xtr), ("y", ytr), ("xv", xte), ("yv", yte)):
        np.save(os.path.join(tmp, n + ".npy"), a)
    with Worker(repo) as w:
        r = subprocess.run([CLI, "train", "--zmq", w.endpoint, "--model", "digits", "--x", tmp + "/x.npy",
                            "--y", tmp + "/y.npy", "--x-val", tmp + "/xv.npy", "--y-val", tmp + "/yv.npy",
                            "--loss", "cross_entropy", "--optimizer", "adam", "--lr", "0.003", "--epochs", "30",
                            "--batch-size", "32", "--init", "64:relu,10:softmax", "--seed", "1",
                            "--schedule", "exponential:400:0.5"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
        lines = r.stdout.splitlines()
        assert any(l.startswith("epoch 30/30") for l in lines), r.stdout
        assert "model digits version 1" in r.stdout, r.stdout
        assert "val_accuracy" in lines[-1], r.stdout
        c = Client(w.endpoint)
        res = c.call({"v": 1, "id": 1, "type": "predict", "model": "digits", "inputs": tensor(xte)})
        assert res["status"] == "ok" and res["version"] == 1, res
        acc = float((outputs(res).argmax(axis=1) == yte[:, 0]).mean())
        print("   digits test accuracy %.4f" % acc)
        assert acc >= 0.95, acc
        c.close()
        assert w.stop() == 0


if __name__ == "__main__":
    t = Runner()
    t.run(test_digits_from_init)
    t.done()
