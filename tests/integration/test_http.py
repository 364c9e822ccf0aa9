"""The HTTP server (--http, CONTRACT.md section 7) against a real worker, with
curl and Python's urllib as clients: Open Inference Protocol metadata and
readiness, infer equal bit for bit to the ZeroMQ answer for the same input,
HTTP and ZeroMQ jobs batched together, every error status, readiness during
startup and drain, and /metrics checked by Debian's promtool."""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from qn_harness import Client, Runner, Worker, make_repo, outputs, predict_job, put_version, quern_model

LAYERS = quern_model.random_mlp([6, 16, 3], ["relu", "none"], 7)
LAYERS2 = quern_model.random_mlp([6, 8, 3], ["tanh", "none"], 8)


def http_port(w):
    return int(w.wait_for(r"http: serving on http://[^ ]+:(\d+)", 5).group(1))


def call(port, path, body=None, method=None, headers=None):
    """(status, parsed JSON or text or None)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data,
                                 method=method or ("POST" if data is not None else "GET"),
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    if "json" in ctype and raw:
        return status, json.loads(raw)
    return status, raw.decode() if raw else None


def infer_body(x, jid=None):
    b = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                     "data": x.reshape(-1).tolist()}]}
    if jid is not None:
        b["id"] = jid
    return b


def curl(*args):
    p = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}"] + list(args), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    body, code = p.stdout.rsplit("\n", 1)
    return int(code), body


def metric(text, prefix):
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    return None


def test_metadata_and_ready(repo):
    with Worker(repo, "--http", "127.0.0.1:0") as w:
        port = http_port(w)
        st, meta = call(port, "/v2/models/m")
        assert st == 200, (st, meta)
        assert meta == {"name": "m", "versions": ["1", "2"], "platform": "quern",
                        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 6]}],
                        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]}, meta
        st, meta = call(port, "/v2/models/m/versions/1")
        assert st == 200 and meta["versions"] == ["1"], meta
        code, body = curl("http://127.0.0.1:%d/v2/models/m/versions/2" % port)
        assert code == 200 and json.loads(body)["versions"] == ["2"], body
        assert call(port, "/v2/models/m/ready")[0] == 200
        assert call(port, "/v2/models/m/versions/2/ready")[0] == 200
        st, err = call(port, "/v2/models/m/versions/3/ready")
        assert st == 404 and "no version 3" in err["error"], err
        st, err = call(port, "/v2/models/nope")
        assert st == 404 and "nope" in err["error"], err
        st, err = call(port, "/v2/models/nope/ready")
        assert st == 404, err
        assert call(port, "/v2/health/live")[0] == 200
        assert call(port, "/v2/health/ready")[0] == 200
        assert curl("http://127.0.0.1:%d/v2/health/ready" % port)[0] == 200
        assert call(port, "/v2/nothing")[0] == 404
        assert call(port, "/v2/models/m/infer")[0] == 405  # GET
        assert w.stop() == 0


def test_infer_equals_zmq(repo):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    with Worker(repo, "--http", "127.0.0.1:0") as w:
        port = http_port(w)
        c = Client(w.endpoint)
        for path, ver in (("/v2/models/m/infer", 2), ("/v2/models/m/versions/1/infer", 1)):
            zres = c.call(predict_job("z", "m", x, version=ver))
            assert zres["status"] == "ok", zres
            st, res = call(port, path, infer_body(x, "req-7"))
            assert st == 200, (st, res)
            assert res["model_name"] == "m" and res["model_version"] == str(ver), res
            assert res["id"] == "req-7", res
            out = res["outputs"][0]
            assert out["datatype"] == "FP32" and out["shape"] == [5, 3], out
            y = np.array(out["data"], dtype=np.float64).astype(np.float32).reshape(5, 3)
            assert np.array_equal(y, outputs(zres)), (y, outputs(zres))  # bit for bit
        # nested data (Triton accepts row-major nesting), no id, through curl
        body = json.dumps({"inputs": [{"name": "input", "shape": [5, 6], "datatype": "FP32",
                                       "data": x.tolist()}]})
        code, text = curl("-XPOST", "-H", "Content-Type: application/json", "--data-binary", body,
                          "http://127.0.0.1:%d/v2/models/m/infer" % port)
        assert code == 200, text
        res = json.loads(text)
        assert "id" not in res
        y = np.array(res["outputs"][0]["data"], dtype=np.float64).astype(np.float32).reshape(5, 3)
        assert np.array_equal(y, outputs(c.call(predict_job("z", "m", x))))
        c.close()
        assert w.stop() == 0


def test_http_and_zmq_batch_together(repo):
    # A long batching window: every job below arrives inside it, so they can
    # only be answered by one forward pass if HTTP and ZeroMQ jobs share it.
    with Worker(repo, "--http", "127.0.0.1:0", "--max-delay-us", "1500000", "--max-batch", "64",
                "--threads", "1") as w:
        port = http_port(w)
        before = metric(call(port, "/metrics")[1], 'quern_batches_total{model="m",version="2"}') or 0
        x = np.arange(6, dtype=np.float32).reshape(1, 6)
        c = Client(w.endpoint)
        results = []

        def one(i):
            results.append(call(port, "/v2/models/m/infer", infer_body(x + i, "h%d" % i)))

        ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        t0 = time.time()
        for t in ts:
            t.start()
        for i in range(4):
            c.send(predict_job("z%d" % i, "m", x + 10 + i))
        zs = [c.recv() for _ in range(4)]
        for t in ts:
            t.join()
        assert time.time() - t0 < 10
        assert all(r["status"] == "ok" for r in zs), zs
        assert sorted(r[1]["id"] for r in results) == ["h0", "h1", "h2", "h3"], results
        text = call(port, "/metrics")[1]
        after = metric(text, 'quern_batches_total{model="m",version="2"}')
        assert after - before == 1, (before, after)
        assert metric(text, 'quern_batch_rows_bucket{model="m",version="2",le="8"}') >= 1
        assert metric(text, 'quern_requests_total{model="m",version="2",status="ok"}') >= 8
        c.close()
        assert w.stop() == 0


def test_errors(repo):
    x = np.ones((2, 6), np.float32)
    with Worker(repo, "--http", "127.0.0.1:0", "--http-max-body", "4096", "--queue-limit", "4") as w:
        port = http_port(w)
        p = "/v2/models/m/infer"
        cases = [
            (b"{not json", 400, "not JSON"),
            ({"inputs": []}, 400, "exactly one"),
            ({"inputs": [{"name": "input", "shape": [2, 6], "datatype": "INT32", "data": [1] * 12}]}, 400, "FP32"),
            ({"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}, 400, "shape"),
            ({"inputs": [{"name": "input", "shape": [2, 6], "datatype": "FP32", "data": [1] * 11}]}, 400, "11 numbers"),
            ({"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": ["a"] * 6}]}, 400, "numbers"),
            ({"inputs": [{"name": "input", "shape": [2, 5], "datatype": "FP32", "data": [1] * 10}]}, 400, "shape_mismatch"),
            (infer_body(x, 5), 400, "id"),
        ]
        for body, status, word in cases:
            st, err = call(port, p, body)
            assert st == status and word in err["error"], (body, st, err)
        st, err = call(port, "/v2/models/nope/infer", infer_body(x))
        assert st == 404 and "unknown_model" in err["error"], err
        st, err = call(port, "/v2/models/m/versions/9/infer", infer_body(x))
        assert st == 404 and "unknown_version" in err["error"], err
        big = infer_body(np.ones((300, 6), np.float32))
        st, err = call(port, p, big)  # Content-Length over the limit: refused unread
        assert st == 413 and "4096" in err["error"], (st, err)
        code, text = curl("-XPOST", "-H", "Transfer-Encoding: chunked", "--data-binary", json.dumps(big),
                          "http://127.0.0.1:%d%s" % (port, p))
        assert code == 413, (code, text)
        st, err = call(port, p, infer_body(np.ones((8, 6), np.float32)))  # 8 rows > the whole queue limit 4
        assert st == 413 and "too_large" in err["error"], (st, err)
        # still serving after all that
        assert call(port, p, infer_body(x))[0] == 200
        assert w.stop() == 0
    # 429: a queue that is full. Jobs wait 3 s for a batch to fill, so four
    # one-row ZeroMQ jobs fill a queue limit of 4 and the next HTTP job is refused.
    with Worker(repo, "--http", "127.0.0.1:0", "--queue-limit", "4", "--max-delay-us", "3000000") as w:
        port = http_port(w)
        c = Client(w.endpoint)
        for i in range(4):
            c.send(predict_job(i, "m", np.ones((1, 6), np.float32)))
        time.sleep(0.5)
        st, err = call(port, p, infer_body(np.ones((1, 6), np.float32)))
        assert st == 429 and "overloaded" in err["error"], (st, err)
        assert sorted(c.recv()["status"] for _ in range(4)) == ["ok"] * 4
        c.close()
        assert w.stop() == 0


def test_readiness_startup(tmp_root):
    repo = os.path.join(tmp_root, "empty-repo")
    os.makedirs(repo)
    with Worker(repo, "--http", "127.0.0.1:0", "--poll-ms", "100") as w:
        port = http_port(w)
        assert call(port, "/v2/health/live")[0] == 200
        assert call(port, "/v2/health/ready")[0] == 503  # no model version loaded yet
        st, err = call(port, "/v2/models/m/infer", infer_body(np.ones((1, 6), np.float32)))
        assert st == 404, (st, err)
        put_version(repo, "m", 1, LAYERS)
        deadline = time.time() + 5
        while call(port, "/v2/health/ready")[0] != 200:
            assert time.time() < deadline, "ready never turned 200 after a model appeared"
            time.sleep(0.05)
        assert w.stop() == 0


def test_readiness_drain(tmp_root):
    # A model wide enough that a queue of jobs takes a second or more to run
    # on one thread: the drain is long enough to look at.
    repo = make_repo({"wide": {1: quern_model.random_mlp([512, 2048, 2048, 8], ["relu", "relu", "none"], 1)}})
    with Worker(repo, "--http", "127.0.0.1:0", "--threads", "1", "--max-batch", "64") as w:
        port = http_port(w)
        assert call(port, "/v2/health/ready")[0] == 200
        c = Client(w.endpoint, timeout_ms=60000)
        x = np.ones((64, 512), np.float32)
        n = 60
        for i in range(n):
            c.send(predict_job(i, "wide", x))
        time.sleep(0.3)
        w.proc.send_signal(signal.SIGTERM)
        saw_503 = live_ok = infer_503 = False
        t0 = time.time()
        while w.proc.poll() is None and time.time() - t0 < 30:
            try:
                if call(port, "/v2/health/ready")[0] == 503:
                    saw_503 = True
                    live_ok = live_ok or call(port, "/v2/health/live")[0] == 200
                    st, _ = call(port, "/v2/models/wide/infer", infer_body(np.ones((1, 512), np.float32)))
                    infer_503 = infer_503 or st == 503
                    if live_ok and infer_503:
                        break
            except (urllib.error.URLError, ConnectionError):
                break  # closed: the worker is past its drain
        assert saw_503 and live_ok and infer_503, (saw_503, live_ok, infer_503, w.log()[-2000:])
        got = [c.recv()["status"] for _ in range(n)]  # everything admitted is still answered
        assert got == ["ok"] * n, got
        assert w.stop() == 0
        c.close()


def test_metrics_promtool(repo):
    if not shutil.which("promtool"):
        raise AssertionError("promtool missing: `make deps` installs Debian's prometheus package")
    with Worker(repo, "--http", "127.0.0.1:0", "--cache-dir", os.path.join(os.path.dirname(repo), "cache-%d" % os.getpid())) as w:
        port = http_port(w)
        x = np.ones((3, 6), np.float32)
        for _ in range(3):
            assert call(port, "/v2/models/m/infer", infer_body(x))[0] == 200
            time.sleep(0.1)  # a result computed on the direct path is written by the cache's 10 ms tick
        call(port, "/v2/models/nope/infer", infer_body(x))
        st, text = call(port, "/metrics")
        assert st == 200
        for series in ("quern_requests_total", "quern_rows_total", "quern_batches_total",
                       "quern_request_duration_seconds_bucket", "quern_queue_duration_seconds_count",
                       "quern_compute_duration_seconds_sum", "quern_batch_rows_bucket",
                       "quern_cache_hits_total", "quern_cache_misses_total", "quern_cache_evictions_total",
                       "quern_cache_bytes", "quern_queue_rows", "quern_kafka_dlq_total",
                       "quern_train_steps_total", "quern_model_info"):
            assert re.search(r"^%s[{ ]" % series, text, re.M), series
        assert metric(text, 'quern_requests_total{model="m",version="2",status="ok"}') == 3
        assert metric(text, 'quern_rows_total{model="m",version="2"}') == 9
        assert metric(text, 'quern_cache_hits_total') == 2  # the same input three times
        assert metric(text, 'quern_requests_total{model="",version="",status="error"}') == 1
        assert metric(text, 'quern_model_info{model="m",version="1",repr="f32"}') == 1
        p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        # promtool exits 0 and prints nothing for a clean exposition (lint
        # findings such as a counter without _total are printed and fail).
        assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), (p.stdout, p.stderr)
        assert w.stop() == 0


def main():
    r = Runner()
    repo = make_repo({"m": {1: LAYERS2, 2: LAYERS}})
    tmp_root = os.path.dirname(repo)
    r.run(test_metadata_and_ready, repo)
    r.run(test_infer_equals_zmq, repo)
    r.run(test_http_and_zmq_batch_together, repo)
    r.run(test_errors, repo)
    r.run(test_readiness_startup, tmp_root + "/ready-%d" % os.getpid())
    r.run(test_readiness_drain, tmp_root)
    r.run(test_metrics_promtool, repo)
    r.done()


if __name__ == "__main__":
    main()
