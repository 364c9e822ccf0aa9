"""quern-broker with plain RFC 7 peers (mdp_peers.py, written from the RFC):
a client and a worker interoperate, MMI, malformed frames from either side
are dropped without harm, flags, and SIGTERM/SIGINT exit 0."""
import signal
import subprocess
import time

import zmq

from mdp_peers import BROKER, C_CLIENT, DISCONNECT, HEARTBEAT, READY, REPLY, W_WORKER, Broker, Client, Worker
from qn_harness import Runner


def test_flags():
    p = subprocess.run([BROKER, "--help"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0 and "--policy" in p.stdout and "--queue-limit" in p.stdout, p
    for args in (["--policy", "fastest"], ["--heartbeat-ms", "x"], ["--retries", "-1"], ["--queue-limit", "0"],
                 ["--nope"], ["stray"]):
        p = subprocess.run([BROKER] + args, capture_output=True, text=True, timeout=10)
        assert p.returncode == 2, (args, p)
    p = subprocess.run([BROKER, "--bind", "bogus://x"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 1 and "bind" in p.stderr, p


def test_interop_req_and_dealer():
    with Broker("--heartbeat-ms", "250") as b:
        w = Worker(b.endpoint, "echo", "w1")
        w.start()
        req = Client(b.endpoint, kind=zmq.REQ)
        r = req.request("echo", b"hello", b"world")
        assert r == ("echo", [b"w1", b"hello", b"world"]), r
        # a DEALER client keeps many in flight; each reply is its own
        d = Client(b.endpoint)
        for i in range(200):
            d.send("echo", b"%d" % i)
        got = sorted(int(d.recv()[1][1]) for _ in range(200))
        assert got == list(range(200))
        # a request for a service nobody serves yet waits for its worker
        d.send("later", b"x")
        assert d.recv(0.5) is None
        w2 = Worker(b.endpoint, "later", "w2")
        w2.start()
        assert d.recv(5) == ("later", [b"w2", b"x"])
        w.stop()
        w2.stop()
        assert b.stop() == 0


def test_mmi():
    with Broker("--heartbeat-ms", "250") as b:
        c = Client(b.endpoint)
        assert c.request("mmi.service", b"echo") == ("mmi.service", [b"404"])
        assert c.request("mmi.workers", b"echo") == ("mmi.workers", [b"0"])
        ws = [Worker(b.endpoint, "echo", "w%d" % i) for i in range(3)]
        for w in ws:
            w.start()
        b.wait_for(r"ready for 'echo'", count=3)
        assert c.request("mmi.service", b"echo") == ("mmi.service", [b"200"])
        assert c.request("mmi.workers", b"echo") == ("mmi.workers", [b"3"])
        assert c.request("mmi.frobnicate", b"echo") == ("mmi.frobnicate", [b"501"])
        assert c.request("mmi.service") == ("mmi.service", [b"400"])
        ws[0].stop()  # DISCONNECT
        b.wait_for(r"disconnected")
        assert c.request("mmi.workers", b"echo") == ("mmi.workers", [b"2"])
        ws[1].die()  # silent: gone after 3 heartbeats
        time.sleep(1.2)
        assert c.request("mmi.workers", b"echo") == ("mmi.workers", [b"1"])
        # mmi.* never creates a service on demand
        assert c.request("mmi.service", b"nobody") == ("mmi.service", [b"404"])
        ws[2].stop()
        b.stop()


def test_malformed_frames_dropped():
    with Broker("--heartbeat-ms", "250") as b:
        w = Worker(b.endpoint, "echo", "w1")
        w.start()
        ctx = zmq.Context.instance()
        bad = ctx.socket(zmq.DEALER)
        bad.setsockopt(zmq.LINGER, 0)
        bad.connect(b.endpoint)
        garbage = [
            [b"x"], [b"", b"NOPE01"], [b"no delimiter", C_CLIENT, b"echo", b"b"],
            [b"", C_CLIENT], [b"", C_CLIENT, b""], [b"", C_CLIENT, b"s" * 300, b"b"],
            [b"", W_WORKER], [b"", W_WORKER, b"\x09"], [b"", W_WORKER, b"\x01\x01", b"svc"],
            [b"", W_WORKER, READY], [b"", W_WORKER, READY, b"svc", b"credit=0"],
            [b"", W_WORKER, READY, b"svc", b"credit=lots"], [b"", W_WORKER, READY, b"mmi.service"],
            [b"", W_WORKER, b"\x02", b"addr", b"", b"body"], [b"", W_WORKER, REPLY, b"addr"],
            [b"", W_WORKER, REPLY, b"addr", b"notempty", b"b"], [b""] * 100,
            [b"", W_WORKER, REPLY, b"not-a-token", b"", b"b"],  # from an unknown worker: DISCONNECT
            [b"", W_WORKER, HEARTBEAT],  # unknown worker: DISCONNECT
            [b"", W_WORKER, DISCONNECT],  # unknown worker: ignored
        ]
        for _ in range(5):
            for g in garbage:
                bad.send_multipart(g)
        # a registered worker that sends a REPLY with a forged token: dropped
        fake = ctx.socket(zmq.DEALER)
        fake.setsockopt(zmq.LINGER, 0)
        fake.connect(b.endpoint)
        fake.send_multipart([b"", W_WORKER, READY, b"fakesvc"])
        fake.send_multipart([b"", W_WORKER, REPLY, b"\x00" * 7 + b"\x05", b"", b"forged"])
        fake.send_multipart([b"", W_WORKER, REPLY, b"short", b"", b"forged"])
        c = Client(b.endpoint)
        for i in range(20):
            assert c.request("echo", b"%d" % i) == ("echo", [b"w1", b"%d" % i])
        b.wait_for(r"malformed")
        b.wait_for(r"more malformed messages|dropped a malformed", 3)
        # the log is rate-limited: far fewer lines than messages
        n = sum("dropped a malformed" in l for l in b.lines)
        assert 5 <= n <= 25, n
        # the unknown-worker HEARTBEAT got DISCONNECT back
        got = []
        while bad.poll(500):
            got.append(bad.recv_multipart())
        assert [b"", W_WORKER, DISCONNECT] in got, got
        # READY twice ends the conversation (RFC 7)
        fake.send_multipart([b"", W_WORKER, READY, b"fakesvc"])
        deadline = time.time() + 3
        seen = False
        while time.time() < deadline and not seen:
            if fake.poll(200):
                seen = fake.recv_multipart() == [b"", W_WORKER, DISCONNECT]
        assert seen
        assert b.proc.poll() is None
        w.stop()
        assert b.stop() == 0


def test_signals_exit_0():
    for sig in (signal.SIGTERM, signal.SIGINT):
        with Broker() as b:
            w = Worker(b.endpoint, "echo", "w1", hb_ms=2500)
            w.start()
            b.wait_for(r"ready for 'echo'")
            assert b.stop(sig) == 0
            # the broker told its worker it is going
            deadline = time.time() + 3
            while w.disconnects_received == 0 and time.time() < deadline:
                time.sleep(0.05)
            assert w.disconnects_received >= 1
            w.die()


if __name__ == "__main__":
    r = Runner()
    r.run(test_flags)
    r.run(test_interop_req_and_dealer)
    r.run(test_mmi)
    r.run(test_malformed_frames_dropped)
    r.run(test_signals_exit_0)
    r.done()
