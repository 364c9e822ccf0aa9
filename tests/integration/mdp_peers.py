"""mdp_peers: Majordomo Protocol (RFC 7, MDP 0.1) peers written from the RFC
alone, independent of quern-broker's code, and a Broker process wrapper.

  client request: [""], "MDPC01", service, body...          (REQ adds/strips "")
  client reply:   [""], "MDPC01", service, body...
  worker -> broker: "", "MDPW01", 0x01 READY service | 0x03 REPLY addr "" body | 0x04 | 0x05
  broker -> worker: "", "MDPW01", 0x02 REQUEST addr "" body | 0x04 HEARTBEAT | 0x05 DISCONNECT

Run as a script it is a worker process (for kill -9 tests):
  python3 mdp_peers.py worker ENDPOINT SERVICE NAME [--delay S] [--credit N] [--hb-ms N]
"""
import heapq
import os
import re
import subprocess
import sys
import threading
import time

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qn_harness import BUILD  # noqa: E402

BROKER = os.path.join(BUILD, "quern-broker")
C_CLIENT = b"MDPC01"
W_WORKER = b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"


class Broker:
    """A running build/quern-broker; endpoint from its log."""

    def __init__(self, *args, bind="tcp://127.0.0.1:*"):
        self.args = list(args)
        self.bind = bind
        self.start()

    def start(self):
        self.proc = subprocess.Popen([BROKER, "--bind", self.bind] + self.args, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True, bufsize=1)
        self.lines = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        m = self.wait_for(r"listening on (\S+)", 10)
        self.endpoint = m.group(1)

    def _read(self):
        for line in self.proc.stderr:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, pattern, timeout=10.0, count=1):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self._cv:
            while True:
                hits = [m for m in (rx.search(l) for l in self.lines) if m]
                if len(hits) >= count:
                    return hits[count - 1]
                left = deadline - time.time()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError("broker: no %d line(s) matching %r within %.1fs; log:\n%s"
                                         % (count, pattern, timeout, "\n".join(self.lines[-40:])))
                self._cv.wait(min(left, 0.1))

    def log(self):
        with self._cv:
            return "\n".join(self.lines)

    def stop(self, sig=15, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Client:
    """RFC 7 client. request() is the RFC's synchronous client with its retry
    (on timeout: close, reconnect, resend). send()/recv() are the
    asynchronous form over a DEALER (many in flight)."""

    def __init__(self, endpoint, timeout=5.0, retries=3, kind=zmq.DEALER):
        self.endpoint, self.timeout, self.retries, self.kind = endpoint, timeout, retries, kind
        self.ctx = zmq.Context.instance()
        self._connect()

    def _connect(self):
        self.sock = self.ctx.socket(self.kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)

    def send(self, service, *body):
        frames = [C_CLIENT, service.encode() if isinstance(service, str) else service] + list(body)
        if self.kind == zmq.DEALER:
            frames = [b""] + frames
        self.sock.send_multipart(frames)

    def recv(self, timeout=None):
        """(service, [body frames]) or None on timeout."""
        t = self.timeout if timeout is None else timeout
        if not self.sock.poll(int(t * 1000)):
            return None
        frames = self.sock.recv_multipart()
        if self.kind == zmq.DEALER:
            assert frames[0] == b"", frames
            frames = frames[1:]
        assert frames[0] == C_CLIENT, frames
        return frames[1].decode(), frames[2:]

    def request(self, service, *body):
        for _ in range(self.retries + 1):
            self.send(service, *body)
            r = self.recv()
            if r is not None:
                return r
            self.sock.close()
            self._connect()
        return None

    def close(self):
        self.sock.close()


class Worker(threading.Thread):
    """RFC 7 worker that holds up to `credit` requests at once; each is
    answered `delay` seconds after it arrived with [name, body...]
    (handler may change that). Counts what it got; heartbeats; reconnects
    after DISCONNECT or a silent broker."""

    def __init__(self, endpoint, service, name, delay=0.0, credit=None, hb_ms=250, extra_ready=(),
                 handler=None, announce_credit=True):
        super().__init__(daemon=True)
        self.endpoint, self.service, self.wname = endpoint, service.encode(), name.encode()
        self.delay, self.credit, self.hb = delay, credit, hb_ms / 1000.0
        self.extra_ready = list(extra_ready)
        self.announce_credit = announce_credit
        self.handler = handler or (lambda body: [self.wname] + body)
        self.received = 0
        self.replied = 0
        self.held = 0
        self.max_held = 0
        self.connects = 0
        self.disconnects_received = 0
        self._quit = threading.Event()
        self._die = threading.Event()
        self._hang = threading.Event()
        self.ctx = zmq.Context.instance()

    def _connect(self):
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)
        ready = [b"", W_WORKER, READY, self.service]
        if self.credit and self.announce_credit:
            ready.append(b"credit=%d" % self.credit)
        self.sock.send_multipart(ready + self.extra_ready)
        self.connects += 1
        self.liveness = 3
        self.next_hb = time.time() + self.hb
        self.pending = []  # (due, seq, addr, body)

    def run(self):
        self._connect()
        seq = 0
        while not self._quit.is_set():
            if self._die.is_set():
                self.sock.close()  # no DISCONNECT: as if killed
                return
            if self._hang.is_set():
                time.sleep(0.05)  # connected but mute: a hung process
                continue
            now = time.time()
            while self.pending and self.pending[0][0] <= now:
                _, _, addr, body = heapq.heappop(self.pending)
                self.sock.send_multipart([b"", W_WORKER, REPLY, addr, b""] + self.handler(body))
                self.replied += 1
                self.held -= 1
            wake = self.next_hb
            if self.pending:
                wake = min(wake, self.pending[0][0])
            timeout = min(0.1, max(0.0, wake - time.time()))  # stop()/die() answered within 0.1 s
            if self.sock.poll(int(timeout * 1000) + 1):
                frames = self.sock.recv_multipart()
                self.liveness = 3
                assert frames[0] == b"" and frames[1] == W_WORKER, frames
                cmd = frames[2]
                if cmd == REQUEST:
                    addr, empty, body = frames[3], frames[4], frames[5:]
                    assert empty == b""
                    self.received += 1
                    self.held += 1
                    self.max_held = max(self.max_held, self.held)
                    seq += 1
                    heapq.heappush(self.pending, (time.time() + self.delay, seq, addr, body))
                elif cmd == DISCONNECT:
                    self.disconnects_received += 1
                    self.sock.close()
                    self.held = 0
                    self._connect()
                    continue
            if time.time() >= self.next_hb:
                if not self.sock.poll(0):
                    self.liveness -= 1
                if self.liveness <= 0:
                    self.sock.close()
                    self.held = 0
                    time.sleep(self.hb)
                    self._connect()
                    continue
                self.sock.send_multipart([b"", W_WORKER, HEARTBEAT])
                self.next_hb = time.time() + self.hb
        self.sock.send_multipart([b"", W_WORKER, DISCONNECT])
        self.sock.close()

    def stop(self):
        self._quit.set()
        self.join(5)

    def hang(self):
        """Stays connected but sends nothing more (a hung process)."""
        self._hang.set()

    def die(self):
        """Goes silent without DISCONNECT (what the broker sees of kill -9)."""
        self._die.set()
        self.join(5)


def main(argv):
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("role")
    p.add_argument("endpoint")
    p.add_argument("service")
    p.add_argument("name")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--credit", type=int, default=None)
    p.add_argument("--hb-ms", type=int, default=250)
    a = p.parse_args(argv)
    w = Worker(a.endpoint, a.service, a.name, delay=a.delay, credit=a.credit, hb_ms=a.hb_ms)
    w.start()
    print("worker up", flush=True)
    w.join()


if __name__ == "__main__":
    main(sys.argv[1:])
