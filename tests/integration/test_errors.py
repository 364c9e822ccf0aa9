"""Bad input never crashes or hangs the worker: every malformed message gets
an error result with the contract's code, and the next job is served."""
import time

import msgpack
import numpy as np
import zmq

from qn_harness import Client, Runner, Worker, make_repo, outputs, predict_job, quern_model, tensor

LAYERS = quern_model.random_mlp([8, 16, 3], ["relu", "softmax"], 1)
GOOD = predict_job("good", "m", np.ones((1, 8), np.float32))


def expect_error(c, payload, code, status="error", want_id=None, raw=False):
    res = c.call_raw(payload) if raw else c.call(payload)
    assert res["status"] == status, res
    assert res["type"] == "result" and res["v"] == 1, res
    assert res["error"]["code"] == code, res
    assert isinstance(res["error"]["message"], str) and res["error"]["message"], res
    if want_id is not None:
        assert res["id"] == want_id, res
    # The worker keeps serving.
    ok = c.call(GOOD)
    assert ok["status"] == "ok" and ok["id"] == "good", ok
    return res


def test_bad_message(ep):
    c = Client(ep)
    for payload in (b"", b"\xc1", b"not msgpack at all \xff\xff", msgpack.packb([1, 2, 3]),
                    msgpack.packb("a string"), msgpack.packb(42), b"\x82\xa1v"):
        res = expect_error(c, payload, "bad_message", raw=True)
        assert res["id"] is None, res
    c.close()


def test_bad_job(ep):
    c = Client(ep)
    x = tensor(np.ones((1, 8), np.float32))
    base = {"v": 1, "id": "b", "type": "predict", "model": "m", "inputs": x}
    cases = []
    for field in ("v", "type", "model", "inputs"):
        j = dict(base)
        del j[field]
        cases.append(j)
    cases += [dict(base, v=2), dict(base, v="1"), dict(base, type="nope"), dict(base, model=5),
              dict(base, model="bad/name"), dict(base, model="x" * 65), dict(base, version=0),
              dict(base, version="1"), dict(base, priority=-1), dict(base, cache="yes"),
              dict(base, reply_to=3), dict(base, deadline_ms="soon"),
              dict(base, inputs={"dtype": "f64", "shape": [1, 8], "data": b"\0" * 64}),
              dict(base, inputs={"dtype": "f32", "shape": [1, 8], "data": b"\0" * 31}),
              dict(base, inputs={"dtype": "f32", "shape": [2, 8], "data": b"\0" * 32}),
              dict(base, inputs={"dtype": "f32", "shape": [1, -8], "data": b""}),
              dict(base, inputs={"dtype": "f32", "shape": [1 << 40, 1 << 40], "data": b""}),
              dict(base, inputs={"dtype": "f32", "shape": [1, 8], "data": "text"}),
              dict(base, inputs=[[1, 2], [3]]), dict(base, inputs=[]), dict(base, inputs=[["a"] * 8]),
              dict(base, inputs="nope")]
    for j in cases:
        expect_error(c, j, "bad_job", want_id="b" if "id" in j else None)
    # The id is echoed even when other fields are wrong; missing id is nil.
    j = dict(base)
    del j["id"]
    res = expect_error(c, j, "bad_job")
    assert res["id"] is None
    expect_error(c, dict(base, id=[1]), "bad_job")
    c.close()


def test_unknown_model_version_shape(ep):
    c = Client(ep)
    x = np.ones((1, 8), np.float32)
    expect_error(c, predict_job(1, "nosuch", x), "unknown_model", want_id=1)
    expect_error(c, predict_job(2, "m", x, version=99), "unknown_version", want_id=2)
    expect_error(c, predict_job(3, "m", np.ones((2, 5), np.float32)), "shape_mismatch", want_id=3)
    c.close()


def test_expired(ep):
    c = Client(ep)
    past = int(time.time() * 1000) - 1000
    res = expect_error(c, predict_job("e", "m", np.ones((1, 8), np.float32), deadline_ms=past),
                       "expired", status="expired", want_id="e")
    future = int(time.time() * 1000) + 60000
    res = c.call(predict_job("f", "m", np.ones((1, 8), np.float32), deadline_ms=future))
    assert res["status"] == "ok", res
    c.close()


def test_too_large_when_over_queue_limit(ep):
    # --queue-limit is 64 rows in this worker: a 65-row job can never fit, on
    # an idle worker too, so retrying cannot help: too_large, not overloaded.
    c = Client(ep)
    res = expect_error(c, predict_job("big", "m", np.ones((65, 8), np.float32)), "too_large",
                       want_id="big")
    assert "queue limit of 64 rows" in res["error"]["message"], res
    # A job of exactly the limit is served.
    ok = c.call(predict_job("edge", "m", np.ones((64, 8), np.float32)))
    assert ok["status"] == "ok" and outputs(ok).shape == (64, 3), ok
    c.close()


def test_too_large(ep):
    c = Client(ep)
    # the worker runs with --max-message-bytes 65536
    big = predict_job("huge", "m", np.ones((3000, 8), np.float32))
    res = expect_error(c, big, "too_large")
    c.close()


def test_train_not_yet(ep):
    c = Client(ep)
    job = {"v": 1, "id": "t", "type": "train", "model": "m", "loss": "mse"}
    res = c.call(job)
    assert res["status"] == "error" and res["id"] == "t", res
    c.close()


def test_garbage_storm_then_serve(ep):
    """Thousands of random byte strings, interleaved with good jobs."""
    rng = np.random.default_rng(9)
    c = Client(ep)
    n = 3000
    for i in range(n):
        c.send_raw(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
        if i % 100 == 0:
            c.send(GOOD)
    got = 0
    for _ in range(n + n // 100):
        res = c.recv()
        assert res["status"] in ("ok", "error"), res
        got += 1
    assert c.call(GOOD)["status"] == "ok"
    c.close()


if __name__ == "__main__":
    repo = make_repo({"m": {1: LAYERS}})
    r = Runner()
    with Worker(repo, "--queue-limit", "64", "--max-message-bytes", "65536") as w:
        for t in (test_bad_message, test_bad_job, test_unknown_model_version_shape, test_expired,
                  test_too_large_when_over_queue_limit, test_too_large, test_train_not_yet,
                  test_garbage_storm_then_serve):
            r.run(t, w.endpoint)
        assert w.stop() == 0
    r.done()
