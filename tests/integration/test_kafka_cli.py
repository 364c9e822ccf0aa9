"""`quern predict --kafka` against a real quern-worker consuming from
quern-kafka-mock: the result table and --output match numpy, reply topics
(the default quern.predict.PID auto-created, and one shared by concurrent
calls that must each get their own result), error results (exit 1, code
printed), timeouts with no worker, unreachable brokers and usage errors;
results read back with kcat and `quern decode` (both framings), and a
"models" metadata job served over Kafka."""
import json
import os
import subprocess
import tempfile
import time

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from kafka_harness import Mock, kafka_worker, produce_jobs, producer
from qn_harness import BUILD, CLI, Runner, make_repo, quern_model

LAYERS = quern_model.random_mlp([6, 12, 4], ["relu", "softmax"], 3)
TOPICS = ["quern.jobs:4", "quern.results:2", "quern.dlq:1", "shared.replies:3", "decode.replies:1"]


def cli(*args, timeout=60):
    p = subprocess.run([CLI, "predict"] + list(args), capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def npy(d, name, x):
    path = os.path.join(d, name)
    np.save(path, x)
    return path


def topics_of(bootstrap):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t"})
    names = set(c.list_topics(timeout=10).topics)
    c.close()
    return names


def test_ok_matches_numpy(bs, d):
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    out = os.path.join(d, "y.npy")
    rc, so, se = cli("--kafka", bs, "--model", "m", "--input", npy(d, "x.npy", x), "--output", out)
    assert rc == 0, (so, se)
    assert "status   ok" in so and "model    m (version 1)" in so and "outputs  3 x 4" in so, so
    want = quern_model.forward(LAYERS, x)
    np.testing.assert_allclose(np.load(out), want, rtol=2e-4, atol=2e-5)
    # the table shows the argmax of each (softmax) row
    for r, row in enumerate(want):
        line = [l for l in so.splitlines() if l.split()[:1] == [str(r)]][0]
        assert int(line.split()[-2]) == int(row.argmax()), line
    # the default reply topic was created by the brokers (auto-create)
    assert any(t.startswith("quern.predict.") for t in topics_of(bs)), topics_of(bs)
    # one row (1-D .npy), an integer id, a pinned version
    x1 = x[0]
    rc, so, se = cli("--kafka", bs, "--model", "m", "--input", npy(d, "x1.npy", x1), "--id", "77",
                     "--version", "1", "--output", out)
    assert rc == 0, (so, se)
    np.testing.assert_allclose(np.load(out), want[:1], rtol=2e-4, atol=2e-5)


def test_shared_reply_topic(bs, d):
    """Three calls at once on one reply topic: each waits for its own id and
    prints its own result, whatever else arrives on the topic."""
    ids = ["alpha", "42", "beta"]
    xs = [np.random.default_rng(10 + i).standard_normal((2, 6)).astype(np.float32) for i in range(3)]
    procs = []
    for i, jid in enumerate(ids):
        out = os.path.join(d, "shared%d.npy" % i)
        procs.append((out, subprocess.Popen(
            [CLI, "predict", "--kafka", bs, "--model", "m", "--input", npy(d, "s%d.npy" % i, xs[i]),
             "--reply-topic", "shared.replies", "--id", jid, "--output", out],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for i, (out, p) in enumerate(procs):
        so, se = p.communicate(timeout=60)
        assert p.returncode == 0, (ids[i], so, se)
        np.testing.assert_allclose(np.load(out), quern_model.forward(LAYERS, xs[i]), rtol=2e-4,
                                   atol=2e-5)
    # the results went to the shared topic, keyed by the ids
    c = Consumer({"bootstrap.servers": bs, "group.id": "check", "auto.offset.reset": "earliest"})
    c.assign([TopicPartition("shared.replies", p, 0) for p in range(3)])
    keys = set()
    deadline = time.time() + 15
    while len(keys) < 3 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            keys.add(m.key().decode())
    c.close()
    assert keys == set(ids), keys


def test_error_result(bs, d):
    x = np.ones((1, 6), np.float32)
    rc, so, se = cli("--kafka", bs, "--model", "nope", "--input", npy(d, "e.npy", x))
    assert rc == 1, (so, se)
    assert "status   error" in so and "unknown_model" in se, (so, se)
    rc, so, se = cli("--kafka", bs, "--model", "m", "--input", npy(d, "e5.npy", np.ones((1, 5), np.float32)))
    assert rc == 1 and "shape_mismatch" in se, (so, se)


def test_kcat_decode(bs, d):
    """A predict job and a models job with reply_to decode.replies; kcat
    reads the binary results, quern decode turns them into JSON lines: with
    kcat's default output (a newline after each payload) and with
    -f '%R%s' (--length-prefixed)."""
    x = np.random.default_rng(5).standard_normal((2, 6)).astype(np.float32)
    p = producer(bs)
    produce_jobs(p, "quern.jobs", [
        {"v": 1, "id": "kd-1", "type": "predict", "model": "m", "reply_to": "decode.replies",
         "inputs": {"dtype": "f32", "shape": [2, 6], "data": x.tobytes()}},
        {"v": 1, "id": "kd-2", "type": "models", "reply_to": "decode.replies"},
    ])
    for fmt, args in ((None, []), ("%R%s", ["--length-prefixed"])):
        kcat = ["kcat", "-C", "-b", bs, "-t", "decode.replies", "-o", "beginning", "-c", "2", "-q"]
        if fmt:
            kcat += ["-f", fmt]
        k = subprocess.run(kcat, capture_output=True, timeout=60)
        assert k.returncode == 0, k.stderr
        q = subprocess.run([CLI, "decode"] + args, input=k.stdout, capture_output=True, timeout=30)
        assert q.returncode == 0, q.stderr
        got = {r["id"]: r for r in (json.loads(l) for l in q.stdout.decode().splitlines())}
        assert set(got) == {"kd-1", "kd-2"}, got
        assert got["kd-1"]["status"] == "ok", got
        np.testing.assert_allclose(np.array(got["kd-1"]["outputs"], np.float32),
                                   quern_model.forward(LAYERS, x), rtol=2e-4, atol=2e-5)
        assert got["kd-2"]["models"] == [{"name": "m", "latest": 1, "versions": [
            {"version": 1, "input_dim": 6, "output_dim": 4, "repr": "f32"}]}], got["kd-2"]


def test_timeout_without_worker(bs, d):
    x = np.ones((1, 6), np.float32)
    t0 = time.time()
    rc, so, se = cli("--kafka", bs, "--model", "m", "--input", npy(d, "t.npy", x), "--topic",
                     "nobody.consumes", "--timeout-ms", "1500")
    dt = time.time() - t0
    assert rc == 1, (so, se)
    assert "no result" in se and "1500 ms" in se and "nobody.consumes" in se, se
    assert 1.4 < dt < 10, dt
    assert so == "", so


def test_unreachable_brokers(d):
    x = np.ones((1, 6), np.float32)
    t0 = time.time()
    rc, so, se = cli("--kafka", "127.0.0.1:1", "--model", "m", "--input", npy(d, "u.npy", x),
                     "--timeout-ms", "1000")
    assert rc == 1 and se.strip() and time.time() - t0 < 10, (rc, so, se)


def test_usage(bs, d):
    path = npy(d, "u1.npy", np.ones((1, 6), np.float32))
    rc, so, se = cli("--kafka", bs, "--zmq", "tcp://127.0.0.1:1", "--model", "m", "--input", path)
    assert rc == 2, (so, se)
    rc, so, se = cli("--zmq", "tcp://127.0.0.1:1", "--topic", "t", "--model", "m", "--input", path)
    assert rc == 2 and "--kafka" in se, (so, se)
    rc, so, se = cli("--kafka", bs, "--model", "m", "--input", path, "-X", "no.such.property=1")
    assert rc == 2 and "no.such.property" in se, (so, se)
    rc, so, se = cli("--kafka", bs, "--model", "m", "--input", path, "-X", "novalue")
    assert rc == 2 and "key=value" in se, (so, se)
    rc, so, se = cli("--help")
    assert rc == 0 and "--kafka" in so and "--reply-topic" in so, so


if __name__ == "__main__":
    repo = make_repo({"m": {1: LAYERS}})
    d = tempfile.mkdtemp(prefix="kcli.", dir=os.path.join(BUILD, "tmp"))
    r = Runner()
    with Mock(TOPICS) as mk:
        r.run(test_timeout_without_worker, mk.bootstrap, d)
        with kafka_worker(repo, mk.bootstrap) as w:
            r.run(test_ok_matches_numpy, mk.bootstrap, d)
            r.run(test_shared_reply_topic, mk.bootstrap, d)
            r.run(test_error_result, mk.bootstrap, d)
            r.run(test_kcat_decode, mk.bootstrap, d)
            r.run(test_usage, mk.bootstrap, d)
            assert w.stop() == 0
    r.run(test_unreachable_brokers, d)
    r.done()
