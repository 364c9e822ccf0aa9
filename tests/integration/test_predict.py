"""Predict over ZeroMQ against a numpy reference: every activation, batch
sizes, both input encodings, REQ and DEALER, thousands in flight, pinned
versions."""
import numpy as np
import zmq

from qn_harness import Client, Runner, Worker, make_repo, outputs, predict_job, quern_model, tensor

ACTS = ["relu", "gelu", "sigmoid", "tanh", "softmax", "none"]


def layers_for(dims, acts, seed):
    return quern_model.random_mlp(dims, acts, seed)


def setup():
    models = {"wide": {1: layers_for([256, 1024, 1024, 16], ["relu", "relu", "none"], 1)},
              "small": {1: layers_for([64, 128, 10], ["relu", "softmax"], 2),
                        2: layers_for([64, 32, 10], ["tanh", "softmax"], 3)}}
    for i, act in enumerate(ACTS):
        models["act_" + act] = {1: layers_for([33, 17, 7], [act, act], 10 + i)}
    # A layer without bias.
    W = np.random.default_rng(5).standard_normal((5, 9)).astype(np.float32)
    models["nobias"] = {1: [(W, None, "sigmoid")]}
    return models


def check(models, ep):
    c = Client(ep)
    rng = np.random.default_rng(0)
    for name, versions in models.items():
        latest = max(versions)
        layers = versions[latest]
        cols = layers[0][0].shape[1]
        for rows in (1, 3, 17):
            x = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
            res = c.call(predict_job("%s-%d" % (name, rows), name, x))
            assert res["status"] == "ok", res
            assert res["id"] == "%s-%d" % (name, rows)
            assert res["model"] == name and res["version"] == latest, res
            assert res["type"] == "result" and res["v"] == 1
            y = outputs(res)
            ref = quern_model.forward(layers, x)
            assert y.shape == ref.shape, (y.shape, ref.shape)
            np.testing.assert_allclose(y, ref, rtol=2e-4, atol=2e-5, err_msg=name)
    c.close()


def test_outputs_match_numpy(models, ep):
    check(models, ep)


def test_array_of_arrays_inputs(models, ep):
    c = Client(ep)
    layers = models["small"][2]
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    job = {"v": 1, "id": 7, "type": "predict", "model": "small", "inputs": x.tolist()}
    res = c.call(job)
    assert res["status"] == "ok", res
    assert res["id"] == 7
    np.testing.assert_allclose(outputs(res), quern_model.forward(layers, x), rtol=2e-4, atol=2e-5)
    # integers are numbers too
    res = c.call({"v": 1, "id": 8, "type": "predict", "model": "small", "inputs": [[1] * 64]})
    assert res["status"] == "ok", res
    c.close()


def test_pinned_versions(models, ep):
    c = Client(ep)
    x = np.ones((2, 64), np.float32)
    for ver in (1, 2):
        res = c.call(predict_job("p%d" % ver, "small", x, version=ver))
        assert res["status"] == "ok" and res["version"] == ver, res
        np.testing.assert_allclose(outputs(res), quern_model.forward(models["small"][ver], x),
                                   rtol=2e-4, atol=2e-5)
    res = c.call(predict_job("latest", "small", x))
    assert res["version"] == 2
    c.close()


def test_req_client(models, ep):
    c = Client(ep, kind=zmq.REQ)
    x = np.zeros((1, 64), np.float32)
    for i in range(20):
        res = c.call(predict_job(i, "small", x))
        assert res["status"] == "ok" and res["id"] == i, res
    c.close()


def test_thousands_in_flight(models, ep):
    """One DEALER sends 5000 jobs before reading any result; all come back,
    each matching its own input."""
    c = Client(ep, timeout_ms=30000)
    layers = models["small"][2]
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((5000, 64)).astype(np.float32)
    for i in range(len(xs)):
        c.send(predict_job(i, "small", xs[i:i + 1]))
    ref = quern_model.forward(layers, xs)
    seen = set()
    for _ in range(len(xs)):
        res = c.recv()
        assert res["status"] == "ok", res
        i = res["id"]
        assert i not in seen
        seen.add(i)
        np.testing.assert_allclose(outputs(res)[0], ref[i], rtol=2e-4, atol=2e-5)
    assert len(seen) == len(xs)
    c.close()


def test_many_clients_mixed_models(models, ep):
    clients = [Client(ep) for _ in range(8)]
    rng = np.random.default_rng(4)
    expect = {}
    for k, c in enumerate(clients):
        for j in range(100):
            name = ["small", "wide", "act_gelu"][(k + j) % 3]
            layers = models[name][max(models[name])]
            x = rng.standard_normal((1 + j % 4, layers[0][0].shape[1])).astype(np.float32)
            jid = "c%d-%d" % (k, j)
            expect[jid] = quern_model.forward(layers, x)
            c.send(predict_job(jid, name, x, priority=j % 3))
    for c in clients:
        for _ in range(100):
            res = c.recv()
            assert res["status"] == "ok", res
            np.testing.assert_allclose(outputs(res), expect.pop(res["id"]), rtol=2e-4, atol=2e-5)
        c.close()
    assert not expect


if __name__ == "__main__":
    models = setup()
    repo = make_repo(models)
    r = Runner()
    for args in (["--threads", "1"], ["--threads", "2", "--max-batch", "8", "--max-delay-us", "200"]):
        with Worker(repo, *args) as w:
            for t in (test_outputs_match_numpy, test_array_of_arrays_inputs, test_pinned_versions,
                      test_req_client, test_thousands_in_flight, test_many_clients_mixed_models):
                r.run(t, models, w.endpoint)
            assert w.stop() == 0
    r.done()
