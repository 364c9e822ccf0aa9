"""A real model: an MLP trained by scikit-learn on its digits dataset, exported
to quern's format, served by the worker, compared to sklearn's predict_proba."""
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from qn_harness import Client, Runner, Worker, make_repo, outputs, predict_job


def sklearn_layers(clf):
    acts = [clf.activation] * (len(clf.coefs_) - 1) + ["softmax"]
    act_map = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": "none"}
    return [(W.T.astype(np.float32), b.astype(np.float32), act_map.get(a, a))
            for W, b, a in zip(clf.coefs_, clf.intercepts_, acts)]


def train(activation="relu", seed=0):
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, d.target, test_size=0.3, random_state=seed)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), activation=activation, max_iter=300,
                        random_state=seed).fit(Xtr, ytr)
    return clf, Xte, yte


def test_digits(ep, clf, Xte, yte, batch):
    c = Client(ep)
    ref = clf.predict_proba(Xte)
    got = np.zeros_like(ref)
    n = 0
    for i in range(0, len(Xte), batch):
        c.send(predict_job(i, "digits", Xte[i:i + batch]))
        n += 1
    for _ in range(n):
        res = c.recv()
        assert res["status"] == "ok", res
        y = outputs(res)
        got[res["id"]:res["id"] + len(y)] = y
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    acc = (got.argmax(1) == yte).mean()
    assert acc > 0.9, acc
    assert acc == (clf.predict(Xte) == yte).mean()
    c.close()


if __name__ == "__main__":
    r = Runner()
    for act in ("relu", "tanh", "logistic"):
        clf, Xte, yte = train(act)
        repo = make_repo({"digits": {1: sklearn_layers(clf)}})
        with Worker(repo, "--threads", "2") as w:
            for batch in (1, 7, 64):
                r.run(test_digits, w.endpoint, clf, Xte, yte, batch)
            assert w.stop() == 0
    r.done()
