"""Kafka faults beyond one broker: a three-broker cluster loses a broker
mid-stream and its partitions' leadership moves to the others (as a
controller would elect new leaders); and a fault that refuses the results and
then their dead-letter copies too, so a job's answer reaches neither: it must
be logged, counted, left uncommitted and answered by the next worker, never
dropped silently."""
import time

import msgpack
import numpy as np

from kafka_harness import (Collector, Mock, committed, ids_answered, kafka_worker, produce_jobs,
                           producer)
from qn_harness import Runner, make_repo, predict_job
import quern_model

SMALL = quern_model.random_mlp([16, 32, 4], ["relu", "none"], 3)
PARTS = 6


def jobs(n, start=0):
    x = np.ones((1, 16), np.float32)
    return [predict_job(i, "m", x) for i in range(start, start + n)]


def ids_in(msgs):
    return {msgpack.unpackb(m.value(), raw=False).get("id") for m in msgs}


def test_broker_failover(repo):
    """Broker 3 of 3 dies while jobs flow; the partitions it led move to
    brokers 1 and 2. The worker follows the new leaders: every job, including
    those produced after the failure, is answered while broker 3 is still
    down, and once it is back the offsets cover them all, nothing lost."""
    with Mock(["quern.jobs:%d" % PARTS, "quern.results:%d" % PARTS, "quern.dlq:2"], brokers=3) as mk:
        # The group's coordinator stays up: its loss is a different fault
        # (the member is evicted and its window replayed: test_kafka_group).
        mk.cmd("coordinator quern 1")
        with kafka_worker(repo, mk.bootstrap, "-X", "quern.commit.interval.ms=200") as w:
            col = Collector(mk.bootstrap, ["quern.results"])
            p = producer(mk.bootstrap)
            produce_jobs(p, "quern.jobs", jobs(500))
            col.wait(lambda m: len(m) >= 100, 20)
            mk.cmd("down 3")
            for topic in ("quern.jobs", "quern.results", "quern.dlq"):
                for part in range(PARTS if topic != "quern.dlq" else 2):
                    mk.cmd("leader %s %d %d" % (topic, part, 1 + part % 2))
            produce_jobs(p, "quern.jobs", jobs(500, 500))
            col.wait(lambda m: len(ids_in(m)) >= 1000, 60)
            during = len(ids_in(col.msgs))
            mk.cmd("up 3")
            col.close()
            got = ids_answered(col)
            assert during == 1000 and set(got) == set(range(1000)), (
                sorted(set(range(1000)) - set(got))[:20], w.log()[-6000:])
            assert all(r["status"] == "ok" for rs in got.values() for r in rs)
            assert w.stop() == 0
            assert " 0 lost" in w.log(), w.log()[-3000:]
        offs = committed(mk.bootstrap, "quern", "quern.jobs", PARTS)
        assert sum(max(o, 0) for o in offs.values()) == 1000, offs
        print("   1000 jobs answered across the failover, %d duplicates"
              % (sum(len(rs) for rs in got.values()) - 1000))


def test_result_and_dlq_both_refused(repo):
    """Every Produce request fails for a while (a non-retriable error): the
    results go to the DLQ, whose writes fail as well, three times each. Such a
    job is logged as reaching neither, counted as lost and its offset stays
    uncommitted; after the fault a new worker in the group answers it."""
    n = 20
    with Mock(["quern.jobs:2", "quern.results:2", "quern.dlq:1"]) as mk:
        produce_jobs(producer(mk.bootstrap), "quern.jobs", jobs(n))
        mk.cmd("errors Produce " + " ".join(["TOPIC_AUTHORIZATION_FAILED"] * 12))
        with kafka_worker(repo, mk.bootstrap, wait_assigned=False) as w:
            w.wait_for(r"reached neither its reply topic nor the DLQ", 60)
            time.sleep(2)  # let the rest settle (answered, or lost too)
            assert w.stop() == 0
            lost = int(w.wait_for(r"(\d+) lost", 1).group(1))
            assert lost > 0, w.log()[-3000:]
        first = committed(mk.bootstrap, "quern", "quern.jobs", 2)
        assert sum(max(o, 0) for o in first.values()) < n, first
        # The fault is over: the next worker replays from the first lost job.
        mk.cmd("clear Produce")
        with kafka_worker(repo, mk.bootstrap) as w2:
            col = Collector(mk.bootstrap, ["quern.results", "quern.dlq"])
            col.wait(lambda m: len(ids_in(m)) >= n, 60)
            col.close()
            assert ids_in(col.msgs) == set(range(n)), (ids_in(col.msgs), w2.log()[-3000:])
            assert w2.stop() == 0
            assert " 0 lost" in w2.log(), w2.log()[-3000:]
        offs = committed(mk.bootstrap, "quern", "quern.jobs", 2)
        assert sum(max(o, 0) for o in offs.values()) == n, offs
        print("   %d of %d jobs lost by the first worker, answered by the second" % (lost, n))


if __name__ == "__main__":
    repo = make_repo({"m": {1: SMALL}})
    r = Runner()
    r.run(test_broker_failover, repo)
    r.run(test_result_and_dlq_both_refused, repo)
    r.done()
