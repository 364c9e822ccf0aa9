"""`quern compress` on a real model: an MLP trained by scikit-learn on its
digits dataset (as test_digits.py), compressed by the CLI, the result checked
against the issue's accuracy bars (int8 loses <= 0.5 points, fp16 none, 50%
unstructured pruning <= 2 points) as the CLI's own --eval/--labels reports
them, and the written files checked with the independent numpy reader
(tests/tools/quern_model.py)."""
import os
import re
import subprocess
import tempfile

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from qn_harness import BUILD, CLI, Runner, quern_model


def train(seed=0):
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, d.target, test_size=0.3, random_state=seed)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), activation="relu", max_iter=300,
                        random_state=seed).fit(Xtr, ytr)
    layers = [(W.T.astype(np.float32), b.astype(np.float32), a)
              for W, b, a in zip(clf.coefs_, clf.intercepts_, ["relu", "relu", "softmax"])]
    return clf, layers, Xte, yte


def compress(d, *opts):
    out = os.path.join(d, "out.safetensors")
    p = subprocess.run([CLI, "compress", os.path.join(d, "in.safetensors"), out, *opts,
                        "--eval", os.path.join(d, "x.npy"), "--labels", os.path.join(d, "y.npy")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (opts, p.stdout, p.stderr)
    acc = re.search(r"accuracy: ([0-9.]+) -> ([0-9.]+)", p.stdout)
    ratio = re.search(r"([0-9.]+)x smaller", p.stdout)
    err = re.search(r"max \|error\| ([0-9.e+-]+)", p.stdout)
    assert acc and ratio and err, p.stdout
    return out, float(acc.group(1)), float(acc.group(2)), float(ratio.group(1)), float(err.group(1)), p.stdout


def test_accuracy(d, clf, Xte, yte):
    ref = (clf.predict(Xte) == yte).mean()
    results = {}
    for name, opts in {"int8": ["--int8"], "fp16": ["--fp16"], "prune50": ["--prune", "0.5"],
                       "prune50_csr": ["--prune", "0.5", "--csr"],
                       "prune50_int8_csr": ["--prune", "0.5", "--int8", "--csr"]}.items():
        path, before, after, ratio, err, out = compress(d, *opts)
        assert abs(before - ref) < 1e-4, (name, before, ref)  # the f32 model through quern = sklearn (4 decimals printed)
        results[name] = (before, after, ratio, err)
        print("     %-17s accuracy %.4f -> %.4f  %.2fx smaller  max|err| %.3g" % (name, before, after, ratio, err))
        # the file as the numpy reader sees it
        layers = quern_model.load_mlp(path)
        y = quern_model.forward(layers, Xte)
        np_acc = (y.argmax(1) == yte).mean()
        if name != "int8" and name != "prune50_int8_csr":
            # f32 activations: quern's kernels and numpy agree on the argmax
            assert abs(np_acc - after) <= 1.0 / len(yte) + 1e-4, (name, np_acc, after)
    assert results["int8"][1] >= results["int8"][0] - 0.005, results["int8"]
    assert results["int8"][2] > 3.0
    assert results["fp16"][1] >= results["fp16"][0], results["fp16"]
    assert results["fp16"][2] > 1.8 and results["fp16"][3] < 5e-3  # small model: header and biases weigh in
    for k in ("prune50", "prune50_csr", "prune50_int8_csr"):
        assert results[k][1] >= results[k][0] - 0.02, (k, results[k])


def test_structured_shrinks(d):
    path, before, after, ratio, err, out = compress(d, "--prune", "0.25", "--structured")
    assert ratio > 1.3, out
    layers = quern_model.load_mlp(path)
    assert [w.shape for w, _, _ in layers] == [(48, 64), (24, 48), (10, 24)], [w.shape for w, _, _ in layers]


def test_bad_options(d):
    for opts in (["--int8", "--fp16"], ["--prune", "1.5"], ["--structured"], ["--prune", "x"]):
        p = subprocess.run([CLI, "compress", os.path.join(d, "in.safetensors"), os.path.join(d, "bad.safetensors"), *opts],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and p.stderr.strip(), (opts, p.returncode, p.stderr)
        assert not os.path.exists(os.path.join(d, "bad.safetensors"))


if __name__ == "__main__":
    r = Runner()
    clf, layers, Xte, yte = train()
    base = os.environ.get("QN_TEST_TMP") or os.path.join(BUILD, "tmp")
    os.makedirs(base, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compress.", dir=base) as d:
        quern_model.write_mlp(os.path.join(d, "in.safetensors"), layers)
        np.save(os.path.join(d, "x.npy"), Xte)
        np.save(os.path.join(d, "y.npy"), yte.astype(np.float32))
        r.run(test_accuracy, d, clf, Xte, yte)
        r.run(test_structured_shrinks, d)
        r.run(test_bad_options, d)
    r.done()
