"""make demo: a newcomer's first minute with quern.

Trains a digits classifier with scikit-learn, writes it into a fresh model
repository in quern's format, then serves it with the real quern-worker two
ways:

1. ZeroMQ: sends the whole test set (one job per image, 128 in flight),
   prints the accuracy and the throughput, stops the worker with SIGTERM.
2. Kafka: a second worker with `--kafka-brokers mock` (librdkafka's mock
   cluster inside the worker; its bootstrap list is on its stderr), the test
   set produced as jobs with confluent-kafka, the results read back from the
   reply topic; then one `quern predict --kafka` call on one image; SIGTERM.
3. Training: a third worker takes a train job from `quern train` (a new
   model from init, Adam, 40 epochs) and serves the version it writes; the
   demo checks it reaches at least 95% on the test set.

Every wait has a timeout that says what did not happen.
"""
import argparse
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "tools"))

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

import quern_model  # noqa: E402


class DemoError(Exception):
    pass


def say(msg):
    print("\033[1m==>\033[0m " + msg, flush=True)


class Worker:
    """A quern-worker whose stderr is read by a thread, so that waiting for
    a log line can time out; lines are echoed (indented) as they are used."""

    def __init__(self, args, name):
        self.name = name
        try:
            self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         text=True, bufsize=1)
        except OSError as e:
            raise DemoError("cannot start %s: %s (built? make builds it)" % (args[0], e))
        self.lines = queue.Queue()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, pattern, timeout):
        """Echoes log lines until one matches pattern; returns the match."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            try:
                line = self.lines.get(timeout=max(left, 0))
            except queue.Empty:
                raise DemoError("%s: no log line matching %r within %.0f s" % (self.name, pattern, timeout))
            if line is None:
                raise DemoError("%s exited (code %s) before logging %r"
                                % (self.name, self.proc.wait(), pattern))
            sys.stderr.write("    " + line)
            m = rx.search(line)
            if m:
                return m

    def echo_pending(self):
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                return
            sys.stderr.write("    " + line)

    def stop(self, timeout=20):
        """SIGTERM, then the rest of its log; returns the exit code."""
        self.echo_pending()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise DemoError("%s did not exit within %d s of SIGTERM (killed)" % (self.name, timeout))
        self._t.join(5)
        self.echo_pending()
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def job(jid, x):
    return msgpack.packb({"v": 1, "id": jid, "type": "predict", "model": "digits",
                          "inputs": {"dtype": "f32", "shape": [1, x.size], "data": x.tobytes()}})


def zeromq_part(worker_bin, repo, Xte, window, workers):
    say("starting quern-worker on %s (ZeroMQ)" % repo)
    w = Worker([worker_bin, "--model-repo", repo, "--zmq-bind", "tcp://127.0.0.1:*"], "ZeroMQ worker")
    workers.append(w)
    endpoint = w.wait_line(r"listening on (\S+)", 20).group(1)
    w.wait_line(r"worker: ready", 20)

    say("sending %d test images over ZeroMQ, one job each, %d in flight" % (len(Xte), window))
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.RCVTIMEO, 10000)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    pred = np.full(len(Xte), -1)
    sent = recv = 0
    t0 = time.time()
    while recv < len(Xte):
        while sent < len(Xte) and sent - recv < window:
            s.send(job(sent, Xte[sent]))
            sent += 1
        try:
            res = msgpack.unpackb(s.recv())
        except zmq.Again:
            raise DemoError("no result from %s within 10 s (%d of %d answered)" % (endpoint, recv, len(Xte)))
        if res["status"] != "ok":
            raise DemoError("job %s answered %s" % (res.get("id"), res))
        pred[res["id"]] = int(np.frombuffer(res["outputs"]["data"], np.float32).argmax())
        recv += 1
    dt = time.time() - t0
    s.close()
    return pred, dt, w


def kafka_part(worker_bin, cli_bin, repo, out, Xte, yte, workers):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    say("starting a second quern-worker on the same repository with --kafka-brokers mock")
    w = Worker([worker_bin, "--model-repo", repo, "--kafka-brokers", "mock"], "Kafka worker")
    workers.append(w)
    bootstrap = w.wait_line(r"bootstrap\.servers=(\S+)", 20).group(1)
    w.wait_line(r"worker: ready", 20)
    # jobs produced before the group settles would be served too (earliest
    # offset); waiting keeps the join out of the jobs/s figure
    w.wait_line(r"kafka: assigned \d+ partition", 30)

    say("producing %d test images as jobs to quern.jobs on %s (confluent-kafka), "
        "reading quern.results" % (len(Xte), bootstrap))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "quern-demo",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    md = c.list_topics("quern.results", timeout=10).topics["quern.results"]
    if md.error or not md.partitions:
        raise DemoError("the reply topic quern.results is not there: %s" % md.error)
    c.assign([TopicPartition("quern.results", p, OFFSET_BEGINNING) for p in md.partitions])
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    # One warm-up job first: a producer meeting a topic for the first time
    # (the worker's, quern.results) waits for its next metadata refresh, up
    # to a second, which would otherwise dominate the jobs/s below.
    p.produce("quern.jobs", job("warm-up", Xte[0]), key="warm-up")
    p.flush(10)
    deadline = time.time() + 20
    while not any(not m.error() and msgpack.unpackb(m.value()).get("id") == "warm-up"
                  for m in c.consume(10, 0.2)):
        if time.time() > deadline:
            raise DemoError("no result for the warm-up job on quern.results within 20 s")
    pred = np.full(len(Xte), -1)
    t0 = time.time()
    for i in range(len(Xte)):
        p.produce("quern.jobs", job(i, Xte[i]), key=str(i))
        p.poll(0)
    if p.flush(10):
        raise DemoError("the jobs were not all acknowledged by the mock cluster within 10 s")
    got = 0
    deadline = time.time() + 20
    while got < len(Xte):
        if time.time() > deadline:
            raise DemoError("only %d of %d results on quern.results within 20 s" % (got, len(Xte)))
        for m in c.consume(500, 0.2):
            if m.error():
                continue
            res = msgpack.unpackb(m.value())
            if res["status"] != "ok":
                raise DemoError("job %s answered %s" % (res.get("id"), res))
            if pred[res["id"]] < 0:
                got += 1
            pred[res["id"]] = int(np.frombuffer(res["outputs"]["data"], np.float32).argmax())
    dt = time.time() - t0
    c.close()
    acc = (pred == yte).mean()
    say("Kafka: accuracy %.2f%%, %d jobs in %.3f s = %.0f jobs/s (first produce to last result)"
        % (acc * 100, len(Xte), dt, len(Xte) / dt))

    digit = os.path.join(out, "digit.npy")
    np.save(digit, Xte[0])
    cmd = [cli_bin, "predict", "--kafka", bootstrap, "--model", "digits", "--input", digit]
    say("one image through the CLI (its label is %d): %s" % (yte[0], " ".join(
        os.path.relpath(a, SRC) if a.startswith(SRC) else a for a in cmd)))
    w.echo_pending()
    try:
        rc = subprocess.run(cmd, timeout=30).returncode
    except subprocess.TimeoutExpired:
        raise DemoError("quern predict --kafka did not finish within 30 s")
    if rc != 0:
        raise DemoError("quern predict --kafka exited with %d" % rc)
    return acc, w


def train_part(worker_bin, cli_bin, repo, out, Xtr, ytr, Xte, yte, workers):
    """Trains a new model from init through the worker (quern train over
    ZeroMQ), then serves the version it wrote."""
    say("starting quern-worker for a train job (ZeroMQ)")
    w = Worker([worker_bin, "--model-repo", repo, "--zmq-bind", "tcp://127.0.0.1:*"], "train worker")
    workers.append(w)
    endpoint = w.wait_line(r"listening on (\S+)", 20).group(1)
    w.wait_line(r"worker: ready", 20)
    files = {}
    for n, a in (("x", Xtr), ("y", ytr.astype(np.float32).reshape(-1, 1)), ("xv", Xte),
                 ("yv", yte.astype(np.float32).reshape(-1, 1))):
        files[n] = os.path.join(out, "train_%s.npy" % n)
        np.save(files[n], a.astype(np.float32))
    cmd = [cli_bin, "train", "--zmq", endpoint, "--model", "digits_trained", "--x", files["x"], "--y", files["y"],
           "--x-val", files["xv"], "--y-val", files["yv"], "--loss", "cross_entropy", "--optimizer", "adam",
           "--lr", "0.003", "--epochs", "40", "--batch-size", "32", "--init", "64:relu,10:softmax", "--seed", "1"]
    say("training digits_trained from init through the worker: " + " ".join(
        os.path.relpath(a, SRC) if a.startswith(SRC) else a for a in cmd))
    w.echo_pending()
    try:
        rc = subprocess.run(cmd, timeout=120).returncode
    except subprocess.TimeoutExpired:
        raise DemoError("quern train did not finish within 120 s")
    if rc != 0:
        raise DemoError("quern train exited with %d" % rc)
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.RCVTIMEO, 10000)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    s.send(msgpack.packb({"v": 1, "id": "test-set", "type": "predict", "model": "digits_trained",
                          "inputs": {"dtype": "f32", "shape": list(Xte.shape), "data": Xte.tobytes()}}))
    try:
        res = msgpack.unpackb(s.recv())
    except zmq.Again:
        raise DemoError("no result for the trained model within 10 s")
    s.close()
    if res["status"] != "ok":
        raise DemoError("the trained model answered %s" % res)
    out_ = np.frombuffer(res["outputs"]["data"], np.float32).reshape(res["outputs"]["shape"])
    acc = (out_.argmax(axis=1) == yte).mean()
    say("trained through quern: version %d serves the test set at %.2f%% accuracy" % (res["version"], acc * 100))
    return acc, w


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(SRC, "build"))
    ap.add_argument("--window", type=int, default=128)
    args = ap.parse_args()
    worker_bin = os.path.join(args.build, "quern-worker")
    cli_bin = os.path.join(args.build, "quern")

    out = os.path.join(SRC, "demo", "out")
    shutil.rmtree(out, ignore_errors=True)
    repo = os.path.join(out, "models")
    os.makedirs(os.path.join(repo, "digits", "1"))

    say("training a digits classifier with scikit-learn (64 -> 64 -> 32 -> 10)")
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, d.target, test_size=0.5, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=400, random_state=0).fit(Xtr, ytr)
    layers = [(W.T.astype(np.float32), b.astype(np.float32), a)
              for W, b, a in zip(clf.coefs_, clf.intercepts_, ["relu", "relu", "softmax"])]
    path = os.path.join(repo, "digits", "1", "model.safetensors")
    quern_model.write_mlp(path, layers)
    if os.path.exists(cli_bin):
        subprocess.run([cli_bin, "inspect", path])
    ref = (clf.predict(Xte) == yte).mean()

    workers = []
    ok = True
    try:
        pred, dt, w = zeromq_part(worker_bin, repo, Xte, args.window, workers)
        acc = (pred == yte).mean()
        say("ZeroMQ: accuracy %.2f%% (scikit-learn itself: %.2f%%), %d jobs in %.3f s = %.0f jobs/s"
            % (acc * 100, ref * 100, len(Xte), dt, len(Xte) / dt))
        say("stopping the ZeroMQ worker (SIGTERM)")
        rc = w.stop()
        say("worker exited with %d" % rc)
        ok = ok and rc == 0 and acc == ref

        acc, w = kafka_part(worker_bin, cli_bin, repo, out, Xte, yte, workers)
        say("stopping the Kafka worker (SIGTERM)")
        rc = w.stop()
        say("worker exited with %d" % rc)
        ok = ok and rc == 0 and acc == ref

        acc, w = train_part(worker_bin, cli_bin, repo, out, Xtr.astype(np.float32), ytr, Xte.astype(np.float32),
                            yte, workers)
        rc = w.stop()
        ok = ok and rc == 0 and acc >= 0.95
    except DemoError as e:
        say("demo failed: %s" % e)
        ok = False
    finally:
        for w in workers:
            w.kill()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
