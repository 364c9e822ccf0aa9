"""quern workers behind quern-broker (quern-worker --broker): correct answers
through the broker for every model, models added while running become
services, kill -9 of a quern worker with requests in flight loses none,
SIGTERM answers what it holds and then says DISCONNECT, a restarted broker
is found again, and `quern predict/bench --broker` work as MDP clients."""
import os
import signal
import socket
import subprocess
import time

import msgpack
import numpy as np

from mdp_peers import Broker, Client
from qn_harness import CLI, Runner, Worker, make_repo, outputs, predict_job, put_version, quern_model

HB = "200"
MODELS = {"small": {1: quern_model.random_mlp([16, 32, 4], ["relu", "softmax"], 1)},
          "other": {1: quern_model.random_mlp([8, 5], ["tanh"], 2)}}


def qworker(repo, ep, *args):
    return Worker(repo, "--broker", ep, "--broker-heartbeat-ms", HB, "--threads", "1", *args, zmq_bind=None)


def call_many(c, jobs, timeout=15):
    """jobs: list of (service, job map); returns {id: result map}."""
    for svc, job in jobs:
        c.send(svc, msgpack.packb(job, use_bin_type=True))
    got = {}
    deadline = time.time() + timeout
    while len(got) < len(jobs) and time.time() < deadline:
        r = c.recv(0.5)
        if r is None:
            continue
        assert len(r[1]) == 1, r
        res = msgpack.unpackb(r[1][0], raw=False)
        assert res["id"] not in got, "answered twice: %r" % res["id"]
        got[res["id"]] = res
    return got


def check_results(got, xs, layers_of):
    for jid, (model, x) in xs.items():
        res = got[jid]
        assert res["status"] == "ok", res
        assert res["model"] == model
        np.testing.assert_allclose(outputs(res), quern_model.forward(layers_of[model], x), rtol=2e-4, atol=2e-5)


def wait_workers(c, service, n, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = c.request("mmi.workers", service.encode())
        if r and r[1] == [b"%d" % n]:
            return
        time.sleep(0.1)
    raise AssertionError("service %s never had %d workers (last: %r)" % (service, n, r))


def test_answers_and_new_models():
    repo = make_repo(MODELS)
    with Broker("--heartbeat-ms", HB) as b, qworker(repo, b.endpoint) as w1, qworker(repo, b.endpoint) as w2:
        c = Client(b.endpoint)
        for m in MODELS:
            wait_workers(c, m, 2)
        b.wait_for(r"ready for 'small' \(credit 64")  # credit from --max-batch (default 64)
        rng = np.random.default_rng(0)
        jobs, xs = [], {}
        for i in range(300):
            model = "small" if i % 3 else "other"
            x = rng.standard_normal((1 + i % 4, 16 if model == "small" else 8)).astype(np.float32)
            jid = "j%d" % i if i % 2 else i
            jobs.append((model, predict_job(jid, model, x)))
            xs[jid] = (model, x)
        got = call_many(c, jobs)
        assert len(got) == 300, len(got)
        check_results(got, xs, {m: v[1] for m, v in MODELS.items()})
        # a model that appears while they run becomes a service of both
        new = quern_model.random_mlp([4, 3], ["none"], 3)
        put_version(repo, "late", 1, new)
        wait_workers(c, "late", 2, 10)
        x = np.ones((2, 4), np.float32)
        got = call_many(c, [("late", predict_job("late-1", "late", x))])
        check_results(got, {"late-1": ("late", x)}, {"late": new})
        # a job the core refuses is answered through the broker like any other
        got = call_many(c, [("small", predict_job("bad", "small", np.ones((1, 3), np.float32)))])
        assert got["bad"]["status"] == "error" and got["bad"]["error"]["code"] == "shape_mismatch", got
        assert w1.stop() == 0 and w2.stop() == 0
        b.wait_for(r"disconnected", count=6)  # each of the two said DISCONNECT for each of 3 services


def test_kill_9_of_a_quern_worker_loses_nothing():
    repo = make_repo(MODELS)
    slow = ("--max-delay-us", "3000000", "--direct-max-flops", "0", "--direct-idle-rows", "0")
    with Broker("--heartbeat-ms", HB, "--policy", "round-robin") as b, \
            qworker(repo, b.endpoint, *slow) as victim, qworker(repo, b.endpoint) as survivor:
        c = Client(b.endpoint)
        wait_workers(c, "small", 2)
        rng = np.random.default_rng(1)
        jobs, xs = [], {}
        for i in range(40):
            x = rng.standard_normal((1, 16)).astype(np.float32)
            jobs.append(("small", predict_job(i, "small", x)))
            xs[i] = ("small", x)
        for svc, job in jobs:
            c.send(svc, msgpack.packb(job, use_bin_type=True))
        time.sleep(0.8)  # the survivor answered its half; the victim's wait in its batcher
        victim.proc.kill()
        victim.proc.wait()
        got = {}
        deadline = time.time() + 15
        while len(got) < 40 and time.time() < deadline:
            r = c.recv(0.5)
            if r:
                res = msgpack.unpackb(r[1][0], raw=False)
                assert res["id"] not in got
                got[res["id"]] = res
        assert len(got) == 40, sorted(got)
        check_results(got, xs, {"small": MODELS["small"][1]})
        m = b.wait_for(r"of 'small' (is unreachable|missed its heartbeats) holding (\d+) request")
        assert int(m.group(2)) >= 10, m.group(0)
        assert c.recv(0.5) is None
        assert survivor.stop() == 0


def test_sigterm_answers_then_disconnects():
    repo = make_repo(MODELS)
    slow = ("--max-delay-us", "5000000", "--direct-max-flops", "0", "--direct-idle-rows", "0")
    with Broker("--heartbeat-ms", HB) as b, qworker(repo, b.endpoint, *slow) as w:
        c = Client(b.endpoint)
        wait_workers(c, "small", 1)
        xs = {i: ("small", np.full((1, 16), i, np.float32)) for i in range(10)}
        for i, (_, x) in xs.items():
            c.send("small", msgpack.packb(predict_job(i, "small", x), use_bin_type=True))
        time.sleep(0.5)  # held in the batcher (5 s delay)
        t0 = time.time()
        assert w.stop(signal.SIGTERM) == 0
        assert time.time() - t0 < 4, "the drain did not flush the batcher"
        got = call_many(c, [], 0)
        deadline = time.time() + 5
        while len(got) < 10 and time.time() < deadline:
            r = c.recv(0.5)
            if r:
                res = msgpack.unpackb(r[1][0], raw=False)
                got[res["id"]] = res
        assert len(got) == 10, got
        check_results(got, xs, {"small": MODELS["small"][1]})
        b.wait_for(r"of 'small' disconnected$")  # holding nothing: it answered first
        wait_workers(c, "small", 0)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def test_broker_restart_and_cli():
    repo = make_repo(MODELS)
    port = free_port()
    b = Broker("--heartbeat-ms", HB, bind="tcp://127.0.0.1:%d" % port)
    try:
        with qworker(repo, b.endpoint) as w:
            c = Client(b.endpoint)
            wait_workers(c, "small", 1)
            b.proc.kill()
            b.proc.wait()
            w.wait_for(r"service 'small': broker silent for 3 heartbeats; reconnecting in 100 ms", 5)
            time.sleep(0.5)
            b.start()
            c = Client(b.endpoint)
            wait_workers(c, "small", 1, 20)
            x = np.arange(32, dtype=np.float32).reshape(2, 16) / 10
            npy = os.path.join(repo, "x.npy")
            out = os.path.join(repo, "y.npy")
            np.save(npy, x)
            p = subprocess.run([CLI, "predict", "--broker", b.endpoint, "--model", "small", "--input", npy,
                                "--output", out], capture_output=True, text=True, timeout=30)
            assert p.returncode == 0, p
            np.testing.assert_allclose(np.load(out), quern_model.forward(MODELS["small"][1], x), rtol=2e-4,
                                       atol=2e-5)
            p = subprocess.run([CLI, "predict", "--broker", b.endpoint, "--zmq", b.endpoint, "--model", "small",
                                "--input", npy], capture_output=True, text=True, timeout=30)
            assert p.returncode == 2, p
            p = subprocess.run([CLI, "bench", "--broker", b.endpoint, "--model", "small", "--cols", "16",
                                "--jobs", "2000", "--warmup", "100", "--window", "32", "--json"],
                               capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p
            assert '"ok": 2000' in p.stdout.replace('"ok":2000', '"ok": 2000'), p.stdout
            assert w.stop() == 0
        assert b.stop() == 0
    finally:
        if b.proc.poll() is None:
            b.proc.kill()


def test_worker_against_a_hand_driven_broker():
    """A ROUTER playing broker by hand: the worker's READY frames, its
    heartbeats, malformed messages it must drop, a REQUEST answered with the
    address echoed, a bad body answered bad_message, DISCONNECT -> a new
    connection with READY again."""
    import zmq
    repo = make_repo({"small": MODELS["small"]})
    ctx = zmq.Context.instance()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    port = r.bind_to_random_port("tcp://127.0.0.1")
    ep = "tcp://127.0.0.1:%d" % port
    with qworker(repo, ep, "--broker-credit", "7") as w:
        assert r.poll(10000)
        ready = r.recv_multipart()
        wid = ready[0]
        assert ready[1:] == [b"", b"MDPW01", b"\x01", b"small", b"credit=7"], ready
        for bad in ([b"x"], [b"", b"MDPW01"], [b"", b"NOPE01", b"\x02"], [b"", b"MDPW01", b"\x09"],
                    [b"", b"MDPW01", b"\x02", b"addr", b"notempty", b"body"], [b"", b"MDPW01", b"\x02", b"addr"],
                    [b"", b"MDPW01", b"\x02\x02"]):
            r.send_multipart([wid] + bad)
        x = np.ones((1, 16), np.float32)
        r.send_multipart([wid, b"", b"MDPW01", b"\x02", b"TOKEN-1", b"", msgpack.packb(predict_job("ok-1", "small", x),
                                                                                   use_bin_type=True)])
        r.send_multipart([wid, b"", b"MDPW01", b"\x02", b"TOKEN-2", b"", b"\xc1 not msgpack"])
        # addressable but not one body frame (a plain MDP client): answered, so no credit leaks
        r.send_multipart([wid, b"", b"MDPW01", b"\x02", b"TOKEN-3", b""])
        r.send_multipart([wid, b"", b"MDPW01", b"\x02", b"TOKEN-4", b"", b"b1", b"b2"])
        replies, heartbeats = {}, 0
        deadline = time.time() + 10
        while (len(replies) < 4 or heartbeats < 2) and time.time() < deadline:
            if not r.poll(200):
                continue
            f = r.recv_multipart()
            assert f[0] == wid and f[1:3] == [b"", b"MDPW01"], f
            if f[3] == b"\x04":
                heartbeats += 1
            else:
                assert f[3] == b"\x03" and f[5] == b"" and len(f) == 7, f
                replies[f[4]] = msgpack.unpackb(f[6], raw=False)
        assert heartbeats >= 2, heartbeats
        assert replies[b"TOKEN-1"]["id"] == "ok-1" and replies[b"TOKEN-1"]["status"] == "ok", replies
        np.testing.assert_allclose(outputs(replies[b"TOKEN-1"]), quern_model.forward(MODELS["small"][1], x),
                                   rtol=2e-4, atol=2e-5)
        for tok in (b"TOKEN-2", b"TOKEN-3", b"TOKEN-4"):
            assert replies[tok]["status"] == "error" and replies[tok]["error"]["code"] == "bad_message", replies
        w.wait_for(r"dropped a malformed message from the broker")
        # DISCONNECT: the worker starts over on a new socket
        r.send_multipart([wid, b"", b"MDPW01", b"\x05"])
        deadline = time.time() + 10
        again = None
        while time.time() < deadline and again is None:
            if r.poll(200):
                f = r.recv_multipart()
                if f[3:4] == [b"\x01"]:
                    again = f
        assert again is not None and again[0] != wid and again[4] == b"small", again
        assert w.proc.poll() is None
        assert w.stop() == 0
    r.close()


if __name__ == "__main__":
    r = Runner()
    r.run(test_answers_and_new_models)
    r.run(test_kill_9_of_a_quern_worker_loses_nothing)
    r.run(test_sigterm_answers_then_disconnects)
    r.run(test_broker_restart_and_cli)
    r.run(test_worker_against_a_hand_driven_broker)
    r.done()
