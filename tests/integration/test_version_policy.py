"""Version policy through the worker (issue 9 item 9): REPO/<name>/config.json
with Triton's latest N / specific / all decides which versions load and which
serves unpinned jobs, changes are picked up while the worker runs, versions
outside the policy are unknown_version, a malformed config is logged and the
policy in effect stays, and a new latest with another input width is warned
about (the shape_mismatch every unpinned client then gets)."""
import json
import os
import time

import numpy as np

from qn_harness import Client, Runner, Worker, make_repo, outputs, predict_job, put_version, quern_model

V1 = quern_model.random_mlp([4, 8, 2], ["relu", "none"], 1)
V2 = quern_model.random_mlp([4, 8, 2], ["tanh", "none"], 2)
WIDE = quern_model.random_mlp([6, 8, 2], ["relu", "none"], 3)  # another input width
X4 = np.arange(8, dtype=np.float32).reshape(2, 4) / 7
X6 = np.arange(12, dtype=np.float32).reshape(2, 6) / 11


def put_config(repo, name, cfg):
    path = os.path.join(repo, name, "config.json")
    with open(path + ".tmp", "w") as f:
        f.write(cfg if isinstance(cfg, str) else json.dumps(cfg))
    os.replace(path + ".tmp", path)


def served(c, x=X4, version=None):
    kw = {"version": version} if version else {}
    return c.call(predict_job("p", "m", x, cache=False, **kw))


def wait_until(pred, what, timeout=3.0):
    t0 = time.time()
    while not pred():
        assert time.time() - t0 < timeout, "not within %.1fs: %s" % (timeout, what)
        time.sleep(0.05)


def test_version_policy():
    repo = make_repo({"m": {1: V1, 2: V2}, "d": {1: V1, 2: V2}})
    put_config(repo, "m", {"version_policy": {"latest": {"num_versions": 1}}})
    with Worker(repo) as w:
        c = Client(w.endpoint)
        res = served(c)
        assert res["status"] == "ok" and res["version"] == 2, res
        np.testing.assert_allclose(outputs(res), quern_model.forward(V2, X4), rtol=2e-4, atol=2e-5)
        res = served(c, version=1)  # outside latest 1: not loaded
        assert res["status"] == "error" and res["error"]["code"] == "unknown_version", res
        # a model without a config: every version, as before
        res = c.call(predict_job("d1", "d", X4, version=1))
        assert res["status"] == "ok" and res["version"] == 1, res

        # pin the old width before a wider version lands: v3 is not loaded
        put_config(repo, "m", {"name": "m", "version_policy": {"specific": {"versions": [1, 2]}}})
        wait_until(lambda: served(c, version=1)["status"] == "ok", "v1 loaded by the specific policy")
        put_version(repo, "m", 3, WIDE)
        time.sleep(1.2)  # two rescans
        assert served(c)["version"] == 2
        res = served(c, X6, version=3)
        assert res["status"] == "error" and res["error"]["code"] == "unknown_version", res
        assert "the latest version is now" not in w.log()

        # a malformed config: logged with its reason, the policy stays
        put_config(repo, "m", '{"version_policy": {"latest": {"num_versions": 0}}}')
        w.wait_for(r"m: .*config\.json is not a valid model config: .*num_versions.* must be an integer >= 1; "
                   r"keeping the version policy specific \[1, 2\]", 3)
        time.sleep(0.6)
        assert served(c)["version"] == 2 and served(c, version=1)["status"] == "ok"

        # widened: v3 becomes latest, with a warning about the width change,
        # and unpinned 4-column clients get shape_mismatch (pinning v2 works)
        put_config(repo, "m", {"version_policy": {"all": {}}})
        wait_until(lambda: served(c, X6).get("version") == 3, "v3 latest under all")
        w.wait_for(r"WARN.*m: the latest version is now v3 \(6 -> 2\), v2 was 4 -> 2: unpinned jobs shaped "
                   r"for v2 now get shape_mismatch", 3)
        res = served(c)
        assert res["status"] == "error" and res["error"]["code"] == "shape_mismatch", res
        res = served(c, version=2)
        assert res["status"] == "ok" and res["version"] == 2, res
        np.testing.assert_allclose(outputs(served(c, X6)), quern_model.forward(WIDE, X6), rtol=2e-4, atol=2e-5)

        # the config removed: the default, every version
        os.remove(os.path.join(repo, "m", "config.json"))
        time.sleep(1.2)
        assert served(c, version=1)["status"] == "ok" and served(c, X6)["version"] == 3
        c.close()
        assert w.stop() == 0


if __name__ == "__main__":
    r = Runner()
    r.run(test_version_policy)
    r.done()
