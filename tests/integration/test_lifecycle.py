"""Flags, startup errors and shutdown: unknown flags give usage and exit 2;
SIGTERM/SIGINT finish what was admitted, answer it, and exit 0."""
import signal
import subprocess
import time

import numpy as np

from qn_harness import WORKER, Client, Runner, Worker, make_repo, outputs, predict_job, quern_model

LAYERS = quern_model.random_mlp([16, 32, 4], ["relu", "none"], 1)


def run(*args):
    p = subprocess.run([WORKER] + list(args), capture_output=True, text=True, timeout=20)
    return p.returncode, p.stdout + p.stderr


def test_usage_errors(repo):
    for args in (["--no-such-flag"], ["--model-repo", repo], ["--zmq-bind", "tcp://127.0.0.1:*"],
                 ["--model-repo", repo, "--zmq-bind", "tcp://127.0.0.1:*", "--max-batch", "zero"],
                 ["--model-repo", repo, "--zmq-bind", "tcp://127.0.0.1:*", "--device", "tpu"],
                 ["--model-repo", repo, "--zmq-bind", "tcp://127.0.0.1:*", "-X", "novalue"],
                 ["--model-repo", repo, "--zmq-bind", "tcp://127.0.0.1:*", "stray"]):
        rc, out = run(*args)
        assert rc == 2, (args, rc, out)
        assert "usage" in out or "wants" in out or "is cpu" in out, (args, out)
    rc, out = run("--help")
    assert rc == 0 and "--model-repo" in out and "--queue-limit" in out


def test_startup_errors(repo):
    rc, out = run("--model-repo", "/nonexistent/repo", "--zmq-bind", "tcp://127.0.0.1:*")
    assert rc == 1 and "repo" in out, (rc, out)
    rc, out = run("--model-repo", repo, "--zmq-bind", "bogus://endpoint")
    assert rc == 1 and "bind" in out, (rc, out)


def drain_on(sig, repo):
    # Jobs wait in the batcher for up to 5 s; the signal must flush them now.
    with Worker(repo, "--max-delay-us", "5000000", "--max-batch", "1000") as w:
        c = Client(w.endpoint)
        x = np.ones((1, 16), np.float32)
        for i in range(50):
            c.send(predict_job(i, "m", x))
        w.wait_for(r"ready")
        time.sleep(0.5)  # all 50 read and queued
        t0 = time.time()
        w.proc.send_signal(sig)
        got = set()
        for _ in range(50):
            res = c.recv()
            assert res["status"] == "ok", res
            np.testing.assert_allclose(outputs(res), quern_model.forward(LAYERS, x), rtol=2e-4, atol=2e-5)
            got.add(res["id"])
        assert got == set(range(50))
        assert w.stop() == 0
        assert time.time() - t0 < 4.0
        assert "draining" in w.log()
        c.close()


def test_sigterm_drains(repo):
    drain_on(signal.SIGTERM, repo)


def test_sigint_drains(repo):
    drain_on(signal.SIGINT, repo)


def test_idle_shutdown_fast(repo):
    with Worker(repo) as w:
        t0 = time.time()
        assert w.stop() == 0
        assert time.time() - t0 < 2.0


if __name__ == "__main__":
    repo = make_repo({"m": {1: LAYERS}})
    r = Runner()
    for t in (test_usage_errors, test_startup_errors, test_sigterm_drains, test_sigint_drains,
              test_idle_shutdown_fast):
        r.run(t, repo)
    r.done()
