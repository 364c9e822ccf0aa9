"""Kafka transport under faults, driven through quern-kafka-mock's control
channel: a broker down for 5 s (no job lost), results that finally fail
delivery (copied to the DLQ, never dropped), backpressure with a tiny queue
(intake stops, then partitions pause; nothing rejected), and SIGTERM mid-stream (stop
fetching, finish, commit, exit 0; a restart replays nothing committed)."""
import time

import msgpack
import numpy as np

from kafka_harness import (Collector, Mock, committed, ids_answered, kafka_worker, produce_jobs,
                           producer)
from qn_harness import Runner, make_repo, predict_job, quern_model

SMALL = quern_model.random_mlp([16, 32, 4], ["relu", "none"], 3)
SLOW = quern_model.random_mlp([256, 1024, 1024, 16], ["relu", "relu", "none"], 4)
# ~0.7 ms per 8-row job on one executor: a 3000-job stream lasts seconds, so
# a stop requested after the first few hundred results lands mid-stream even
# when the collector is slow to see them (ctest -j2 on 2 cores).
SLOWER = quern_model.random_mlp([256, 2048, 2048, 16], ["relu", "relu", "none"], 5)


def jobs(n, start=0, model="m", cols=16):
    x = np.ones((1, cols), np.float32)
    return [predict_job(i, model, x) for i in range(start, start + n)]


def test_broker_down(repo):
    """The only broker goes down for 5 s while jobs flow: every job is
    answered once it is back, and the offsets cover them all."""
    with Mock(["quern.jobs:8", "quern.results:8", "quern.dlq:2"]) as mk:
        with kafka_worker(repo, mk.bootstrap, "-X", "quern.commit.interval.ms=200") as w:
            col = Collector(mk.bootstrap, ["quern.results"])
            p = producer(mk.bootstrap)
            produce_jobs(p, "quern.jobs", jobs(500))
            col.wait(lambda m: len(m) >= 100, 20)
            mk.cmd("down 1")
            # Jobs produced while it is down wait in the producer and are sent
            # after; the worker's results wait in its producer likewise.
            for j in jobs(500, 500):
                p.produce("quern.jobs", msgpack.packb(j, use_bin_type=True), key=str(j["id"]))
                p.poll(0)
            time.sleep(5)
            mk.cmd("up 1")
            assert p.flush(60) == 0
            col.wait(lambda m: len({msgpack.unpackb(x.value())["id"] for x in m}) >= 1000, 60)
            col.close()
            got = ids_answered(col)
            assert set(got) == set(range(1000)), (sorted(set(range(1000)) - set(got))[:20], w.log()[-6000:])
            assert all(r["status"] == "ok" for rs in got.values() for r in rs)
            assert w.stop() == 0
            assert " 0 lost" in w.log(), w.log()[-3000:]
        offs = committed(mk.bootstrap, "quern", "quern.jobs", 8)
        assert sum(max(o, 0) for o in offs.values()) == 1000, offs


def test_delivery_failure_goes_to_dlq(repo):
    """The broker refuses the worker's result writes (a non-retriable error):
    each result lands in the DLQ with headers naming the failure and where it
    was going, and is logged; no job is silently dropped."""
    with Mock(["quern.jobs:4", "quern.results:4", "quern.dlq:2"]) as mk:
        produce_jobs(producer(mk.bootstrap), "quern.jobs", jobs(40))
        # The next Produce request (the worker's first result batch) fails.
        # (One only: more could also hit the DLQ copies, which then stay
        # uncommitted by design rather than reach the DLQ.)
        mk.cmd("errors Produce TOPIC_AUTHORIZATION_FAILED")
        with kafka_worker(repo, mk.bootstrap, wait_assigned=False) as w:
            col = Collector(mk.bootstrap, ["quern.results", "quern.dlq"])

            def covered(msgs):
                ids = set()
                for m in msgs:
                    ids.add(msgpack.unpackb(m.value(), raw=False).get("id"))
                return len(ids) >= 40
            col.wait(covered, 40)
            col.close()
            dlq = [m for m in col.msgs if m.topic() == "quern.dlq"]
            res = [m for m in col.msgs if m.topic() == "quern.results"]
            ids = {msgpack.unpackb(m.value(), raw=False)["id"] for m in col.msgs}
            assert ids == set(range(40)), (sorted(ids), w.log()[-5000:])
            assert dlq, "no result was refused: the fault did not take"
            for m in dlq:
                h = dict(m.headers())
                assert h["quern.dlq.reason"] == b"delivery_failed", h
                assert h["quern.reply.topic"] == b"quern.results"
                assert b"uthoriz" in h["quern.error.message"], h
                r = msgpack.unpackb(m.value(), raw=False)  # the result itself
                assert r["status"] == "ok" and m.key() == str(r["id"]).encode()
            assert "could not be delivered to quern.results" in w.log()
            assert w.stop() == 0
            print("   %d results refused -> DLQ, %d delivered" % (len(dlq), len(res)))
        offs = committed(mk.bootstrap, "quern", "quern.jobs", 4)
        assert sum(max(o, 0) for o in offs.values()) == 40, offs


def test_backpressure_pauses(repo):
    """--queue-limit far below the lag: the worker stops reading (and, once
    stalled past quern.pause.after.ms, pauses its partitions) instead of
    rejecting; every job is answered ok. Run with the default pause delay
    and with 0 (pause as soon as intake blocks), which must pause."""
    n = 2000
    for pause_after in (None, 0):
        with Mock(["quern.jobs:8", "quern.results:8", "quern.dlq:2"]) as mk:
            x = np.ones((1, 256), np.float32)
            produce_jobs(producer(mk.bootstrap), "quern.jobs",
                         [predict_job(i, "slow", x) for i in range(n)])
            extra = [] if pause_after is None else ["-X", "quern.pause.after.ms=%d" % pause_after]
            with kafka_worker(repo, mk.bootstrap, "--queue-limit", "16", "--max-batch", "8",
                              *extra) as w:
                col = Collector(mk.bootstrap, ["quern.results"])
                col.wait(lambda m: len(m) >= n, 120)
                col.close()
                got = ids_answered(col)
                assert set(got) == set(range(n))
                bad = [r for rs in got.values() for r in rs if r["status"] != "ok"]
                assert not bad, bad[:3]
                assert w.stop() == 0
                pauses = int(w.wait_for(r"(\d+) pauses", 1).group(1))
                if pause_after == 0:
                    assert pauses > 0, w.log()[-2000:]
                print("   pause.after.ms %s: %d jobs, %d pauses, 0 rejected"
                      % ("default" if pause_after is None else pause_after, n, pauses))


def test_sigterm_then_restart(repo):
    """SIGTERM mid-stream: exit 0 with everything taken answered and
    committed; a new worker in the group answers exactly the rest: no
    committed job is replayed."""
    n = 3000
    with Mock(["quern.jobs:8", "quern.results:8", "quern.dlq:2"]) as mk:
        x = np.ones((8, 256), np.float32)  # 8 rows a job: slow enough to stop mid-stream
        produce_jobs(producer(mk.bootstrap), "quern.jobs",
                     [predict_job(i, "slower", x) for i in range(n)])
        col = Collector(mk.bootstrap, ["quern.results"])
        with kafka_worker(repo, mk.bootstrap, "--max-batch", "16", "--threads", "1",
                          "-X", "quern.max.inflight=200") as w:
            col.wait(lambda m: len(m) >= 300, 60)
            assert w.stop() == 0
            first = len(col.wait(lambda m: False, 2))
            assert 300 <= first < n, first
        with kafka_worker(repo, mk.bootstrap) as w2:
            col.wait(lambda m: len(m) >= n, 60)
            time.sleep(1.0)  # room for any replayed duplicate to show up
            assert w2.stop() == 0
        col.close()
        got = ids_answered(col)
        dup = {k: len(v) for k, v in got.items() if len(v) > 1}
        assert set(got) == set(range(n)), len(got)
        assert not dup, "replayed after a graceful restart: %d ids" % len(dup)
        print("   first worker answered %d, the restarted one the other %d, 0 replayed"
              % (first, n - first))


if __name__ == "__main__":
    repo = make_repo({"m": {1: SMALL}, "slow": {1: SLOW}, "slower": {1: SLOWER}})
    r = Runner()
    r.run(test_broker_down, repo)
    r.run(test_delivery_failure_goes_to_dlq, repo)
    r.run(test_backpressure_pauses, repo)
    r.run(test_sigterm_then_restart, repo)
    r.done()
