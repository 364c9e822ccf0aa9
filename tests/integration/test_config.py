"""--config FILE (YAML), --print-config and --log-format json against the real
worker binary: errors name the key and the line and exit 2, flags override
the file, -X is last-wins after kafka:, --print-config output loads back as
a config file with the same effect, a worker started from a file serves, and
json logs are one JSON object a line with the contract's fields."""
import json
import os
import subprocess
import tempfile
import time
import urllib.request

import numpy as np

from qn_harness import BUILD, WORKER, Client, Runner, Worker, make_repo, outputs, predict_job, quern_model

LAYERS = quern_model.random_mlp([4, 8, 3], ["relu", "none"], 5)


def run(*args):
    p = subprocess.run([WORKER] + list(args), capture_output=True, text=True, timeout=20)
    return p.returncode, p.stdout, p.stderr


def write(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def yaml_map(text):
    """The printed config as {key: value} (values as the YAML strings/ints)."""
    out, kafka, in_kafka = {}, {}, False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("  ") and in_kafka:
            k, v = line.strip().split(": ", 1)
            kafka[json.loads(k)] = json.loads(v)
            continue
        k, v = line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
        in_kafka = k == "kafka"
        if not in_kafka:
            out[k] = json.loads(v)
    out["kafka"] = kafka
    return out


def test_errors(d, repo):
    cases = [
        ("model-repo: %s\nzmq-bind: tcp://127.0.0.1:*\nmax-batchh: 3\n" % repo, ":3: unknown key 'max-batchh'"),
        ("model-repo: %s\n\nmax-batch: zero\n" % repo, ":3: bad value for key 'max-batch'"),
        ("model-repo: %s\nmax-batch: 0\n" % repo, ":2: bad value for key 'max-batch'"),
        ("model-repo: %s\ndevice: tpu\n" % repo, ":2: bad value for key 'device'"),
        ("model: %s\n" % repo, ":1: unknown key 'model'"),          # no abbreviations in a file
        ("help: x\n", ":1: unknown key 'help'"),
        ("print-config: true\n", ":1: unknown key 'print-config'"),
        ("config: other.yaml\n", ":1: unknown key 'config'"),
        ("model-repo: [a\n", "not YAML"),
        ("- a\n- b\n", "1: the file must be a mapping"),
        ("max-batch: 3\nmax-batch: 4\n", "2: key 'max-batch' given twice (first on line 1)"),
        ("kafka: linger.ms=5\n", "1: key 'kafka' wants a mapping"),
        ("kafka:\n  linger.ms: [1, 2]\n", "2: kafka: entries are 'setting: value'"),
        ("zmq-bind: [a, b]\n", "1: key 'zmq-bind' wants a single value"),
        ("log-format: xml\n", ":1: bad value for key 'log-format'"),
    ]
    for i, (text, want) in enumerate(cases):
        path = write(d, "bad%d.yaml" % i, text)
        rc, out, err = run("--config", path, "--print-config")
        assert rc == 2 and want in err and path in err, (text, rc, err)
    rc, out, err = run("--config", os.path.join(d, "missing.yaml"))
    assert rc == 2 and "missing.yaml" in err and "cannot read" in err, err
    rc, out, err = run("--model-repo", repo, "--zmq-bind", "tcp://127.0.0.1:*", "--log-format", "xml")
    assert rc == 2 and "text or json" in err, err


def test_precedence_and_print(d, repo):
    path = write(d, "c.yaml", "# a comment\nmodel-repo: %s\nzmq-bind: \"tcp://127.0.0.1:*\"\nmax-batch: 32\n"
                 "queue-limit: 1000\nhttp: 127.0.0.1:0\nkafka:\n  linger.ms: 7\n  client.rack: r1\n" % repo)
    rc, out, err = run("--max-batch", "16", "--config", path, "-X", "linger.ms=9", "--print-config")
    assert rc == 0, err
    m = yaml_map(out)
    assert m["max-batch"] == 16 and m["queue-limit"] == 1000, m          # flag over file; file over default
    assert m["model-repo"] == repo and m["zmq-bind"] == "tcp://127.0.0.1:*" and m["http"] == "127.0.0.1:0"
    assert m["max-delay-us"] == 0 and m["kafka-topic"] == "quern.jobs", m  # defaults shown
    assert m["kafka"] == {"linger.ms": "9", "client.rack": "r1"}, m["kafka"]
    assert "--config" not in out
    # the printed configuration is itself a config file with the same effect
    again = write(d, "again.yaml", out)
    rc, out2, err = run("--config", again, "--print-config")
    assert rc == 0, err
    assert yaml_map(out2) == m, (out, out2)
    # without a file: the defaults
    rc, out, err = run("--print-config")
    assert rc == 0 and yaml_map(out)["max-batch"] == 64 and "# model-repo: (not set)" in out, out


def test_worker_from_file(d, repo):
    path = write(d, "serve.yaml", "model-repo: %s\nzmq-bind: tcp://127.0.0.1:*\nhttp: 127.0.0.1:0\n"
                 "max-batch: 8\nlog-format: json\n" % repo)
    w = Worker(repo, "--config", path, zmq_bind=None, wait=False, env={"QN_LOG": "debug"})
    with w:
        w.wait_for(r'"msg":"ready: repo', 20)
        zmq_ep = w.wait_for(r'"msg":"listening on (tcp://[^" ]+)', 5).group(1)
        port = int(w.wait_for(r'"msg":"serving on http://[^:]+:(\d+)"', 5).group(1))
        x = np.ones((2, 4), np.float32)
        c = Client(zmq_ep)
        res = c.call(predict_job("j1", "m", x))
        assert res["status"] == "ok" and np.allclose(outputs(res), quern_model.forward(LAYERS, x), atol=1e-5)
        c.close()
        body = json.dumps({"id": "bad-req-1", "inputs": [{"name": "input", "shape": [1, 3],
                                                          "datatype": "FP32", "data": [1, 2, 3]}]}).encode()
        try:
            urllib.request.urlopen(urllib.request.Request(
                "http://127.0.0.1:%d/v2/models/m/infer" % port, data=body), timeout=10)
            raise AssertionError("a shape mismatch was answered 200")
        except urllib.error.HTTPError as e:
            assert e.code == 400
        w.wait_for(r'"id":"bad-req-1"', 5)
        assert w.stop() == 0
    objs = []
    for line in w.lines:
        o = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "module", "msg"} <= set(o), o
        assert o["level"] in ("error", "warn", "info", "debug"), o
        objs.append(o)
    loaded = [o for o in objs if o["module"] == "registry" and "loaded" in o["msg"]]
    assert loaded and loaded[0]["model"] == "m", loaded
    bad = [o for o in objs if o.get("id") == "bad-req-1"]
    assert bad and bad[0]["model"] == "m" and "shape_mismatch" in bad[0]["msg"], bad
    assert any(o["msg"] == "stopped" for o in objs)


def test_text_stays_default(repo):
    with Worker(repo) as w:
        assert w.stop() == 0
    assert w.lines and not any(l.startswith("{") for l in w.lines), w.lines[:3]
    assert any(" INFO  worker: ready" in l for l in w.lines)


def main():
    r = Runner()
    repo = make_repo({"m": {1: LAYERS}})
    d = tempfile.mkdtemp(prefix="config.", dir=os.path.join(BUILD, "tmp"))
    r.run(test_errors, d, repo)
    r.run(test_precedence_and_print, d, repo)
    r.run(test_worker_from_file, d, repo)
    r.run(test_text_stays_default, repo)
    r.done()


if __name__ == "__main__":
    main()
