"""quern-broker's dispatch: each policy's distribution over two workers of
unequal speed, credit honoured, and the per-service queue bound with its
error replies (plain and quern)."""
import time

import msgpack

from mdp_peers import Broker, Client, Worker
from qn_harness import Runner

N = 60


def run_policy(policy):
    """fast (2 ms) and slow (100 ms) workers, credit 10 each, a client keeping
    2 requests in flight: who served how many."""
    with Broker("--policy", policy, "--heartbeat-ms", "250") as b:
        fast = Worker(b.endpoint, "svc", "fast", delay=0.002, credit=10)
        slow = Worker(b.endpoint, "svc", "slow", delay=0.1, credit=10)
        fast.start()
        b.wait_for(r"ready for 'svc'")
        slow.start()
        b.wait_for(r"ready for 'svc'", count=2)
        c = Client(b.endpoint)
        counts = {b"fast": 0, b"slow": 0}
        sent = 0
        for _ in range(2):
            c.send("svc", b"%d" % sent)
            sent += 1
        for _ in range(N):
            r = c.recv(10)
            assert r is not None, "reply lost"
            counts[r[1][0]] += 1
            if sent < N:
                c.send("svc", b"%d" % sent)
                sent += 1
        fast.stop()
        slow.stop()
        b.stop()
    assert counts[b"fast"] + counts[b"slow"] == N
    return counts[b"fast"], counts[b"slow"]


def test_round_robin():
    f, s = run_policy("round-robin")
    # both always have credit to spare: strict rotation, whatever the speed
    assert abs(f - s) <= 1, (f, s)


def test_random():
    f, s = run_policy("random")
    # binomial(60, 1/2): 5 standard deviations either side
    assert 10 <= f <= 50, (f, s)


def test_least_loaded():
    f, s = run_policy("least-loaded")
    # the slow one holds a request most of the time, so the fast one (fewer
    # outstanding per unit of credit) gets nearly everything
    assert f >= 0.8 * N, (f, s)


def test_lru():
    f, s = run_policy("lru")
    # the worker whose credit came back longest ago goes next: whoever just
    # answered waits its turn, so with credit to spare on both the two take
    # turns whatever their speed (least-loaded is the policy that follows speed)
    assert abs(f - s) <= 2, (f, s)


def test_lru_credit_1_follows_speed():
    with Broker("--heartbeat-ms", "250") as b:
        fast = Worker(b.endpoint, "svc", "fast", delay=0.002)
        slow = Worker(b.endpoint, "svc", "slow", delay=0.1)
        fast.start()
        slow.start()
        b.wait_for(r"ready for 'svc'", count=2)
        c = Client(b.endpoint)
        for i in range(100):
            c.send("svc", b"%d" % i)
        counts = {b"fast": 0, b"slow": 0}
        for _ in range(100):
            counts[c.recv(10)[1][0]] += 1
        fast.stop()
        slow.stop()
    assert counts[b"fast"] > 3 * counts[b"slow"], counts
    assert slow.max_held == 1 and fast.max_held == 1


def test_credit_honoured():
    with Broker("--heartbeat-ms", "250") as b:
        w5 = Worker(b.endpoint, "svc", "w5", delay=0.3, credit=5)
        w1 = Worker(b.endpoint, "svc", "w1", delay=0.3)  # no credit frame: one at a time
        w5.start()
        w1.start()
        b.wait_for(r"ready for 'svc' \(credit 5", 5)
        b.wait_for(r"ready for 'svc' \(credit 1", 5)
        c = Client(b.endpoint)
        for i in range(30):
            c.send("svc", b"%d" % i)
        got = [c.recv(10) for _ in range(30)]
        assert all(g is not None for g in got)
        assert sorted(int(g[1][1]) for g in got) == list(range(30))
        assert w5.max_held == 5, w5.max_held
        assert w1.max_held == 1, w1.max_held
        assert w5.received + w1.received == 30
        # ~5x the share: 6 replies a round against 1
        assert w5.received >= 3 * w1.received, (w5.received, w1.received)
        w5.stop()
        w1.stop()


def test_queue_limit():
    with Broker("--heartbeat-ms", "250", "--queue-limit", "5") as b:
        c = Client(b.endpoint)
        for i in range(5):
            c.send("svc", b"%d" % i)
        # past the bound: an error reply at once, plain form for non-quern bodies
        c.send("svc", b"overflow")
        r = c.recv(2)
        assert r is not None and r[0] == "svc" and r[1][0] == b"503", r
        assert b"full" in r[1][1], r
        # a quern job gets a contract result with its id
        job = msgpack.packb({"v": 1, "id": "j-9", "type": "predict", "model": "svc",
                             "inputs": [[1.0, 2.0]]}, use_bin_type=True)
        c.send("svc", job)
        r = c.recv(2)
        assert r is not None and len(r[1]) == 1, r
        res = msgpack.unpackb(r[1][0], raw=False)
        assert res["v"] == 1 and res["id"] == "j-9" and res["type"] == "result", res
        assert res["status"] == "rejected" and res["error"]["code"] == "overloaded", res
        assert res["error"]["message"], res
        # other services have their own bound
        c.send("other", b"x")
        assert c.recv(0.3) is None
        # the queued five are served once a worker comes
        w = Worker(b.endpoint, "svc", "w")
        w.start()
        got = sorted(int(c.recv(5)[1][1]) for _ in range(5))
        assert got == list(range(5)), got
        w.stop()


if __name__ == "__main__":
    r = Runner()
    r.run(test_round_robin)
    r.run(test_random)
    r.run(test_least_loaded)
    r.run(test_lru)
    r.run(test_lru_credit_1_follows_speed)
    r.run(test_credit_honoured)
    r.run(test_queue_limit)
    r.done()
