"""Hot reload: new versions are served within 2 s, pinned versions keep
working, a broken new version is logged and skipped while the old one serves,
a fixed file is picked up, a removed version stops being served."""
import os
import time

import numpy as np

from qn_harness import Client, Runner, Worker, make_repo, outputs, predict_job, put_version, quern_model

L1 = quern_model.random_mlp([4, 8, 2], ["relu", "none"], 1)
L2 = quern_model.random_mlp([4, 8, 2], ["tanh", "none"], 2)
L3 = quern_model.random_mlp([4, 6, 2], ["sigmoid", "none"], 3)
X = np.arange(8, dtype=np.float32).reshape(2, 4) / 7


def latest_version(c, jid="probe"):
    res = c.call(predict_job(jid, "m", X))
    assert res["status"] == "ok", res
    return res["version"], outputs(res)


def wait_version(c, want, timeout=2.0):
    t0 = time.time()
    while time.time() - t0 < timeout + 0.5:
        v, y = latest_version(c)
        if v == want:
            return time.time() - t0, y
        time.sleep(0.05)
    raise AssertionError("version %d not served within %.1fs (still %d)" % (want, timeout, v))


def test_reload(w, repo):
    c = Client(w.endpoint)
    v, y = latest_version(c)
    assert v == 1
    np.testing.assert_allclose(y, quern_model.forward(L1, X), rtol=2e-4, atol=2e-5)

    put_version(repo, "m", 2, L2)
    dt, y = wait_version(c, 2)
    assert dt <= 2.0, dt
    np.testing.assert_allclose(y, quern_model.forward(L2, X), rtol=2e-4, atol=2e-5)

    # pinned old version still served
    res = c.call(predict_job("pin", "m", X, version=1))
    assert res["status"] == "ok" and res["version"] == 1, res

    # a broken version 3: logged, skipped, v2 keeps serving
    os.makedirs(os.path.join(repo, "m", "3"))
    with open(os.path.join(repo, "m", "3", "model.safetensors"), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    w.wait_for(r"m.*3.*(fail|skip|invalid|cannot)", 3)
    time.sleep(0.6)
    assert latest_version(c)[0] == 2
    res = c.call(predict_job("pin3", "m", X, version=3))
    assert res["status"] == "error" and res["error"]["code"] == "unknown_version", res

    # fixing the file makes it servable
    put_version(repo, "m", 3, L3)
    dt, y = wait_version(c, 3)
    np.testing.assert_allclose(y, quern_model.forward(L3, X), rtol=2e-4, atol=2e-5)

    # a brand-new model appears
    put_version(repo, "fresh", 1, L1)
    t0 = time.time()
    while True:
        res = c.call(predict_job("new", "fresh", X))
        if res["status"] == "ok":
            break
        assert time.time() - t0 < 2.5, res
        time.sleep(0.05)

    # removing the newest version falls back to the previous one
    os.remove(os.path.join(repo, "m", "3", "model.safetensors"))
    os.rmdir(os.path.join(repo, "m", "3"))
    wait_version(c, 2)
    c.close()


def test_load_while_reloading(w, repo):
    """Jobs in flight while versions flip are all answered by some valid version."""
    c = Client(w.endpoint, timeout_ms=20000)
    n = 0
    for k in range(4, 8):
        for i in range(300):
            c.send(predict_job(n, "m", X))
            n += 1
        put_version(repo, "m", k, L2 if k % 2 else L1)
        time.sleep(0.3)
    vers = set()
    for _ in range(n):
        res = c.recv()
        assert res["status"] == "ok", res
        vers.add(res["version"])
    assert len(vers) >= 2, vers
    c.close()


if __name__ == "__main__":
    repo = make_repo({"m": {1: L1}})
    r = Runner()
    with Worker(repo, "--poll-ms", "200") as w:
        r.run(test_reload, w, repo)
        r.run(test_load_while_reloading, w, repo)
        assert w.stop() == 0
    r.done()
