"""clients/python (quern_client) against real workers: ZeroMQ predict,
pipelined predict_many, typed errors for each code a client can provoke,
HTTP (OIP) predict equal to the ZeroMQ answer, Kafka through the mock
cluster with a reply topic of the client's own, and train raising the typed
error this worker gives until training lands."""
import os
import re
import sys
import urllib.request

import numpy as np

from qn_harness import SRC, Runner, Worker, make_repo, quern_model

sys.path.insert(0, os.path.join(SRC, "clients", "python"))
import quern_client as qc  # noqa: E402

LAYERS = quern_model.random_mlp([6, 16, 3], ["relu", "softmax"], 9)


def test_zmq(repo):
    rng = np.random.default_rng(0)
    with Worker(repo, "--queue-limit", "8") as w, qc.ZmqClient(w.endpoint) as c:
        x = rng.standard_normal((4, 6)).astype(np.float32)
        y = c.predict("m", x)
        assert y.dtype == np.float32 and y.shape == (4, 3)
        np.testing.assert_allclose(y, quern_model.forward(LAYERS, x), rtol=2e-4, atol=2e-5)
        xs = [rng.standard_normal((1 + i % 3, 6)).astype(np.float32) for i in range(500)]
        ys = c.predict_many("m", xs, window=64)
        for xi, yi in zip(xs, ys):
            np.testing.assert_allclose(yi, quern_model.forward(LAYERS, xi), rtol=2e-4, atol=2e-5)
        cases = [(lambda: c.predict("nope", x), qc.UnknownModelError, "unknown_model"),
                 (lambda: c.predict("m", x, version=7), qc.UnknownVersionError, "unknown_version"),
                 (lambda: c.predict("m", np.ones((2, 5), np.float32)), qc.ShapeMismatchError, "shape_mismatch"),
                 (lambda: c.predict("m", np.ones((9, 6), np.float32)), qc.TooLargeError, "too_large"),
                 (lambda: c.predict("m", x, deadline_ms=1), qc.ExpiredError, "expired"),
                 (lambda: c.train("m", x, np.zeros((4, 1), np.float32), "bogus_loss",
                                  {"name": "sgd", "lr": 0.1}, 1, 4), qc.BadJobError, "bad_job")]
        for fn, cls, code in cases:
            try:
                fn()
                raise AssertionError("no error for %s" % code)
            except cls as e:
                assert isinstance(e, qc.QuernError) and e.code == code and e.message, (e.code, e.message)
        assert c.predict("m", x).shape == (4, 3)  # the client still works after errors
        assert w.stop() == 0


def test_http(repo):
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    with Worker(repo, "--http", "127.0.0.1:0") as w, qc.ZmqClient(w.endpoint) as z:
        port = int(w.wait_for(r"http: serving on http://[^ ]+:(\d+)", 5).group(1))
        h = qc.HttpClient("http://127.0.0.1:%d" % port)
        assert h.live() and h.ready()
        assert h.metadata("m")["inputs"][0]["shape"] == [-1, 6]
        assert np.array_equal(h.predict("m", x, id="a"), z.predict("m", x))
        # train through the client: progress callback, a new version served
        # at once, and the train series on /metrics
        rng = np.random.default_rng(4)
        tx = rng.standard_normal((256, 6)).astype(np.float32)
        ty = (tx[:, :1] > 0).astype(np.float32)
        seen = []
        res = z.train("t", tx, ty, loss="cross_entropy", optimizer={"name": "adam", "lr": 1e-2}, epochs=3,
                      batch_size=32, init={"input_dim": 6, "layers": [{"units": 16, "activation": "relu"},
                                                                      {"units": 2, "activation": "softmax"}],
                                           "seed": 1}, on_progress=seen.append, seed=3)
        assert res["status"] == "ok" and res["version"] == 1, res
        assert seen and all(p["type"] == "progress" for p in seen), seen
        assert z.predict("t", tx[:4]).shape == (4, 2)
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
            text = r.read().decode()
        assert 'quern_train_steps_total{model="t"} 24' in text, [l for l in text.splitlines() if "train" in l]
        assert re.search(r'^quern_train_loss\{model="t"\} [0-9.e+-]+$', text, re.M), text[-800:]
        for fn, cls in ((lambda: h.predict("nope", x), qc.UnknownModelError),
                        (lambda: h.predict("m", np.ones((1, 2), np.float32)), qc.ShapeMismatchError),
                        (lambda: h.metadata("m", version=5), qc.UnknownVersionError)):
            try:
                fn()
                raise AssertionError("no error")
            except cls:
                pass
        assert w.stop() == 0


def test_kafka(repo):
    from kafka_harness import Mock, kafka_worker
    x = np.random.default_rng(2).standard_normal((2, 6)).astype(np.float32)
    with Mock(topics=["quern.jobs:4", "quern.results:1", "quern.dlq:1"]) as mock:
        with kafka_worker(repo, mock.bootstrap) as w:
            with qc.KafkaClient(mock.bootstrap, topic="quern.jobs") as k:
                np.testing.assert_allclose(k.predict("m", x), quern_model.forward(LAYERS, x), rtol=2e-4, atol=2e-5)
                ys = k.predict_many("m", [x + i for i in range(50)])
                for i, y in enumerate(ys):
                    np.testing.assert_allclose(y, quern_model.forward(LAYERS, x + i), rtol=2e-4, atol=2e-5)
                try:
                    k.predict("nope", x)
                    raise AssertionError("no error")
                except qc.UnknownModelError as e:
                    assert "nope" in e.message
            assert w.stop() == 0


def main():
    r = Runner()
    repo = make_repo({"m": {1: LAYERS}})
    r.run(test_zmq, repo)
    r.run(test_http, repo)
    r.run(test_kafka, repo)
    r.done()


if __name__ == "__main__":
    main()
