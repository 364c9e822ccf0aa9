"""quern-broker loses no request: a worker killed with -9, or one that hangs
(connected, silent), or one that sends DISCONNECT, while holding requests; retries
exhausted give an error reply; a broker restarted under load is ridden out
by clients that retry as RFC 7's client does."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import msgpack

from mdp_peers import Broker, Client, Worker
from qn_harness import Runner

HERE = os.path.dirname(os.path.abspath(__file__))


def collect(c, n, timeout=15):
    got = []
    deadline = time.time() + timeout
    while len(got) < n and time.time() < deadline:
        r = c.recv(0.5)
        if r is not None:
            got.append(r)
    return got


def test_kill_9_loses_nothing():
    with Broker("--heartbeat-ms", "200", "--retries", "3") as b:
        victim = subprocess.Popen([sys.executable, os.path.join(HERE, "mdp_peers.py"), "worker", b.endpoint, "svc",
                                   "victim", "--delay", "5", "--credit", "20", "--hb-ms", "200"],
                                  stdout=subprocess.PIPE, text=True)
        assert victim.stdout.readline().strip() == "worker up"
        b.wait_for(r"ready for 'svc' \(credit 20")
        c = Client(b.endpoint)
        for i in range(20):
            c.send("svc", b"%d" % i)
        time.sleep(0.5)  # all 20 now sit in the victim (5 s each)
        survivor = Worker(b.endpoint, "svc", "survivor", delay=0.001, credit=4, hb_ms=200)
        survivor.start()
        for i in range(20, 40):
            c.send("svc", b"%d" % i)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        got = collect(c, 40)
        bodies = sorted(int(r[1][1]) for r in got)
        assert bodies == list(range(40)), (len(got), bodies)
        assert all(r[1][0] == b"survivor" for r in got)
        # noticed when the next heartbeat could not be routed to it
        b.wait_for(r"(is unreachable|missed its heartbeats) holding 20 request\(s\): 20 requeued")
        assert c.recv(0.5) is None  # and nothing twice
        survivor.stop()


def test_disconnect_and_silence_lose_nothing():
    with Broker("--heartbeat-ms", "200", "--retries", "3") as b:
        a = Worker(b.endpoint, "svc", "a", delay=5, credit=10, hb_ms=200)
        s = Worker(b.endpoint, "svc", "s", delay=5, credit=10, hb_ms=200)
        a.start()
        s.start()
        b.wait_for(r"ready for 'svc'", count=2)
        c = Client(b.endpoint)
        for i in range(20):
            c.send("svc", b"%d" % i)
        time.sleep(0.4)
        assert a.held + s.held == 20, (a.held, s.held)
        good = Worker(b.endpoint, "svc", "good", delay=0.001, credit=2, hb_ms=200)
        good.start()
        b.wait_for(r"ready for 'svc'", count=3)
        a.stop()  # DISCONNECT with 10 held
        s.hang()  # connected but mute with 10 held: only heartbeats tell
        got = collect(c, 20)
        assert sorted(int(r[1][1]) for r in got) == list(range(20)), got
        assert all(r[1][0] == b"good" for r in got)
        b.wait_for(r"disconnected holding 10")
        b.wait_for(r"missed its heartbeats holding 10")
        good.stop()


def test_retries_exhausted_error_reply():
    with Broker("--heartbeat-ms", "200", "--retries", "1") as b:
        c = Client(b.endpoint)
        c.send("svc", b"plain")
        job = msgpack.packb({"v": 1, "id": 77, "type": "predict", "model": "svc", "inputs": [[1.0]]},
                            use_bin_type=True)
        c.send("svc", job)
        for attempt in range(2):  # the first dispatch and one retry, each to a worker that dies
            w = Worker(b.endpoint, "svc", "doomed%d" % attempt, delay=60, credit=2, hb_ms=200)
            w.start()
            deadline = time.time() + 5
            while w.held < 2 and time.time() < deadline:
                time.sleep(0.02)
            assert w.held == 2, w.held
            w.die()
        got = collect(c, 2, 5)
        assert len(got) == 2, got
        plain = [r for r in got if r[1][0] == b"500"]
        assert plain and b"retries" in plain[0][1][1], got
        q = [msgpack.unpackb(r[1][0], raw=False) for r in got if r[1][0] != b"500"]
        assert q and q[0]["id"] == 77 and q[0]["status"] == "error" and q[0]["error"]["code"] == "internal", q
        assert q[0]["type"] == "result" and q[0]["v"] == 1


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def test_broker_restart_under_load():
    port = free_port()
    b = Broker("--heartbeat-ms", "200", bind="tcp://127.0.0.1:%d" % port)
    try:
        w = Worker(b.endpoint, "svc", "w", delay=0.002, credit=4, hb_ms=200)
        w.start()
        b.wait_for(r"ready for 'svc'")
        results, errors = [], []

        def client(k):
            c = Client(b.endpoint, timeout=1.0, retries=10, kind=__import__("zmq").REQ)
            for i in range(40):
                r = c.request("svc", b"%d-%d" % (k, i))
                if r is None:
                    errors.append((k, i))
                else:
                    assert r[1][1] == b"%d-%d" % (k, i), r
                    results.append(r)
                time.sleep(0.01)

        ts = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        time.sleep(0.3)
        b.proc.kill()  # under load, without warning
        b.proc.wait()
        time.sleep(0.3)
        b.start()
        for t in ts:
            t.join(60)
        assert not errors, errors
        assert len(results) == 160
        # the worker came back on its own (the new broker told it to start over)
        assert w.connects >= 2, w.connects
        w.stop()
        assert b.stop() == 0
    finally:
        if b.proc.poll() is None:
            b.proc.kill()


if __name__ == "__main__":
    r = Runner()
    r.run(test_kill_9_loses_nothing)
    r.run(test_disconnect_and_silence_lose_nothing)
    r.run(test_retries_exhausted_error_reply)
    r.run(test_broker_restart_under_load)
    r.done()
