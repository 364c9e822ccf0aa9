#!/usr/bin/python3
"""kafka_fresh_topic.py: how long `quern predict --kafka` takes when its
reply topic is new to the worker (the default, quern.predict.PID) against a
reply topic the worker already produces to (--reply-topic quern.results).
Runs one quern-worker with its embedded mock cluster and a 16->32->4 model;
prints each call's wall time and the worker's per-job times.

  /usr/bin/python3 bench/kafka_fresh_topic.py --build build [--calls 5]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "tools"))
import quern_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--calls", type=int, default=5)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kfresh.")
    os.makedirs(os.path.join(tmp, "m", "1"))
    quern_model.write_mlp(os.path.join(tmp, "m", "1", "model.safetensors"),
                          quern_model.random_mlp([16, 32, 4], ["relu", "none"], 1))
    x = os.path.join(tmp, "x.npy")
    np.save(x, np.ones((1, 16), np.float32))
    w = subprocess.Popen([os.path.join(a.build, "quern-worker"), "--model-repo", tmp,
                          "--kafka-brokers", "mock"], stderr=subprocess.PIPE, text=True)
    boot = None
    while boot is None:
        line = w.stderr.readline()
        if not line:
            sys.exit("worker exited")
        if "bootstrap.servers=" in line:
            boot = line.split("bootstrap.servers=")[1].strip()
    time.sleep(5)  # group join
    cli = [os.path.join(a.build, "quern"), "predict", "--kafka", boot, "--model", "m", "--input", x]
    for label, extra in (("fresh reply topic (quern.predict.PID)", []),
                         ("known reply topic (quern.results)", ["--reply-topic", "quern.results"])):
        ts = []
        for _ in range(a.calls):
            t = time.time()
            subprocess.run(cli + extra, check=True, stdout=subprocess.DEVNULL)
            ts.append(time.time() - t)
        print("%-40s median %.3f s  (%s)" % (label, statistics.median(ts),
                                             " ".join("%.3f" % v for v in ts)))
    w.terminate()
    out = w.stderr.read()
    w.wait()
    print("\n".join(l for l in out.splitlines() if "per job" in l))


if __name__ == "__main__":
    main()
