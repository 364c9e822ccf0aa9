"""make demo: a newcomer's first minute with quern.

Trains a digits classifier with scikit-learn, writes it into a fresh model
repository in quern's format, starts the real quern-worker on it, sends the
whole test set through ZeroMQ (one job per image, 128 in flight), prints the
accuracy and the throughput, then stops the worker with SIGTERM.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
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


def say(msg):
    print("\033[1m==>\033[0m " + msg, flush=True)


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

    say("starting quern-worker on %s" % repo)
    proc = subprocess.Popen([worker_bin, "--model-repo", repo, "--zmq-bind", "tcp://127.0.0.1:*"],
                            stderr=subprocess.PIPE, text=True)
    endpoint = None
    for line in proc.stderr:
        sys.stderr.write("    " + line)
        if "listening on" in line:
            endpoint = line.split("listening on")[1].strip()
        if "worker: ready" in line:
            break
    if not endpoint:
        print("worker did not start", file=sys.stderr)
        return 1

    say("sending %d test images, one job each, %d in flight" % (len(Xte), args.window))
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.RCVTIMEO, 10000)
    s.connect(endpoint)
    pred = np.full(len(Xte), -1)
    sent = recv = 0
    t0 = time.time()
    while recv < len(Xte):
        while sent < len(Xte) and sent - recv < args.window:
            x = Xte[sent:sent + 1]
            s.send(msgpack.packb({"v": 1, "id": sent, "type": "predict", "model": "digits",
                                  "inputs": {"dtype": "f32", "shape": [1, 64], "data": x.tobytes()}}))
            sent += 1
        res = msgpack.unpackb(s.recv())
        assert res["status"] == "ok", res
        y = np.frombuffer(res["outputs"]["data"], np.float32)
        pred[res["id"]] = int(y.argmax())
        recv += 1
    dt = time.time() - t0
    acc = (pred == yte).mean()
    ref = (clf.predict(Xte) == yte).mean()
    say("accuracy %.2f%% (scikit-learn itself: %.2f%%), %d jobs in %.3f s = %.0f jobs/s"
        % (acc * 100, ref * 100, len(Xte), dt, len(Xte) / dt))

    say("stopping the worker (SIGTERM)")
    proc.send_signal(signal.SIGTERM)
    for line in proc.stderr:
        sys.stderr.write("    " + line)
    rc = proc.wait()
    say("worker exited with %d" % rc)
    return 0 if rc == 0 and acc == ref else 1


if __name__ == "__main__":
    sys.exit(main())
