"""qn_harness: start the real quern binaries and talk to them with independent
clients (pyzmq, msgpack, numpy from Debian). Used by every integration test.

Nothing here mocks quern: Worker runs build/quern-worker as a subprocess,
finds the endpoint it bound from its log, and Client speaks the wire format of
CONTRACT.md section 3 over a real ZeroMQ socket.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import numpy as np
import zmq

SRC = os.environ.get("QN_SRC") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("QN_BUILD") or os.path.join(SRC, "build")
sys.path.insert(0, os.path.join(SRC, "tests", "tools"))
import quern_model  # noqa: E402  (tests/tools)

WORKER = os.path.join(BUILD, "quern-worker")
CLI = os.path.join(BUILD, "quern")


def tensor(a):
    a = np.ascontiguousarray(a, dtype="<f4")
    if a.ndim == 1:
        a = a.reshape(1, -1)
    return {"dtype": "f32", "shape": list(a.shape), "data": a.tobytes()}


def outputs(res):
    t = res["outputs"]
    return np.frombuffer(t["data"], dtype="<f4").reshape(t["shape"])


def cache_stats(cdir):
    """`quern cache stats DIR` as a dict of its lines (name -> text)."""
    out = subprocess.run([CLI, "cache", "stats", cdir], capture_output=True, text=True).stdout
    return dict(l.split(None, 1) for l in out.splitlines() if l.strip())


def predict_job(jid, model, x, **kw):
    job = {"v": 1, "id": jid, "type": "predict", "model": model, "inputs": tensor(x)}
    job.update(kw)
    return job


class Worker:
    """A running quern-worker. Use as a context manager; stop() returns the exit code."""

    def __init__(self, repo, *args, zmq_bind="tcp://127.0.0.1:*", env=None, wait=True):
        self.repo = repo
        cmd = [WORKER, "--model-repo", repo]
        if zmq_bind:
            cmd += ["--zmq-bind", zmq_bind]
        cmd += list(args)
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=e,
                                     text=True, bufsize=1)
        self.lines = []
        self.endpoint = None
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            self.wait_for(r"worker: ready", 20)
            if zmq_bind:
                m = self.wait_for(r"listening on (\S+)", 5)
                self.endpoint = m.group(1)

    def sanitized(self):
        """Whether this worker runs under AddressSanitizer (make asan): its
        memory and timing are not the product's (quarantine, shadow memory,
        ~2-3x slower), so bounds that measure those are checked in the plain
        build only."""
        with open("/proc/%d/maps" % self.proc.pid) as f:
            return any("libasan" in line for line in f)

    def _read(self):
        for line in self.proc.stderr:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, pattern, timeout=10.0, start=0):
        """Waits for a log line matching pattern; returns the match."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self._cv:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.time()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError("no log line matching %r within %.1fs; log:\n%s"
                                         % (pattern, timeout, "\n".join(self.lines[-40:])))
                self._cv.wait(min(left, 0.2))

    def log(self):
        with self._cv:
            return "\n".join(self.lines)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("worker did not exit within %ss after signal %s; log:\n%s"
                                 % (timeout, sig, self.log()[-4000:]))
        self._reader.join(5)
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Client:
    """A DEALER (default) or REQ client speaking msgpack."""

    def __init__(self, endpoint, kind=zmq.DEALER, timeout_ms=10000):
        self.ctx = zmq.Context.instance()
        self.kind = kind
        self.sock = self.ctx.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self.sock.connect(endpoint)

    def send_raw(self, data):
        self.sock.send(data)

    def send(self, job):
        self.send_raw(msgpack.packb(job, use_bin_type=True))

    def recv(self):
        frames = self.sock.recv_multipart()
        return msgpack.unpackb(frames[-1], raw=False)

    def call(self, job):
        self.send(job)
        return self.recv()

    def call_raw(self, data):
        self.send_raw(data)
        return self.recv()

    def close(self):
        self.sock.close()


def make_repo(models):
    """models: {name: {version: layers}} where layers is quern_model's list of
    (W, b, activation). Returns the repo path (a fresh temp dir)."""
    base = os.environ.get("QN_TEST_TMP") or os.path.join(BUILD, "tmp")
    os.makedirs(base, exist_ok=True)
    repo = tempfile.mkdtemp(prefix="repo.", dir=base)
    for name, versions in models.items():
        for ver, layers in versions.items():
            put_version(repo, name, ver, layers)
    return repo


def put_version(repo, name, ver, layers):
    d = os.path.join(repo, name, str(ver))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, ".model.safetensors.tmp")
    quern_model.write_mlp(tmp, layers)
    os.replace(tmp, os.path.join(d, "model.safetensors"))


class Runner:
    """Runs test functions, prints 'N passed, N failed' and exits non-zero on failure."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, fn, *args):
        t0 = time.time()
        try:
            fn(*args)
            self.passed += 1
            print("ok   %s (%.1fs)" % (fn.__name__, time.time() - t0), flush=True)
        except Exception:
            import traceback
            self.failed += 1
            print("FAIL %s" % fn.__name__, flush=True)
            traceback.print_exc()

    def done(self):
        print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
        sys.exit(1 if self.failed else 0)
