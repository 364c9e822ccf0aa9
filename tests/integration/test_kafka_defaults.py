"""A consumer group with librdkafka's default timeouts (session.timeout.ms
45000, heartbeat.interval.ms 3000, max.poll.interval.ms 300000), against
quern-kafka-mock: the sequence of issue 9 item 6. One worker serves, a second
joins mid-stream and must get its share; then the first is killed (kill -9),
the second stopped (SIGTERM, exit 0), and a third must serve every job that
was left and every new one.

What the mock's coordinator costs, and so what the bounds below allow: it
ends every join phase only when session.timeout.ms - 1 s has passed (44 s
here; a real broker ends it as soon as every member has rejoined, within a
heartbeat or so), and it drops a dead member session.timeout.ms after its
last request. So a join takes ~44 s, and a crash can take a session to be
noticed plus a join phase to be repaired: up to ~89 s. A real broker takes
a heartbeat for a join, a session plus a heartbeat for a crash.

Before the fix (cooperative-sticky on librdkafka 2.0.2), the second worker
was never assigned anything: every join phase ended with the first worker's
SyncGroup refused and its assignment lost, and the mock started another
44 s phase (schemas/kafka.md, "Consumer group protocol"); the second worker
then aborted in rd_kafka_destroy on SIGTERM. This test runs ~2-2.5 minutes:
one such test is enough."""
import re
import signal
import time

import numpy as np

from kafka_harness import Collector, Mock, Stream, ids_answered, kafka_worker, produce_jobs, producer
from qn_harness import Runner, make_repo, predict_job, quern_model

MODEL = quern_model.random_mlp([16, 32, 4], ["relu", "none"], 7)
TOPICS = ["quern.jobs:16", "quern.results:8", "quern.dlq:2"]
X = np.ones((1, 16), np.float32)
SESSION_S = 45.0  # librdkafka's default session.timeout.ms
JOIN_S = SESSION_S - 1  # how long the mock holds every join phase open
SLACK_S = 15.0  # heartbeats (3 s), metadata and assignment rounds, a loaded machine
RATE = 100  # jobs/s


def assigned_counts(w):
    return [int(x) for x in re.findall(r"kafka: assigned (\d+) partition", w.log())]


def wait_until(pred, timeout):
    deadline = time.time() + timeout
    while not pred() and time.time() < deadline:
        time.sleep(0.1)
    return pred()


def summary(w):
    m = w.wait_for(r"closed: (\d+) jobs taken, (\d+) answered", 5)
    return int(m.group(1)), int(m.group(2))


def test_default_timeouts_join_crash_recover(repo):
    with Mock(TOPICS) as mk:
        col = Collector(mk.bootstrap, ["quern.results"])
        with kafka_worker(repo, mk.bootstrap, group_x=()) as a:
            n1 = int(RATE * (JOIN_S + SLACK_S + 8))
            st = Stream(mk.bootstrap, "quern.jobs", [predict_job(i, "m", X) for i in range(n1)], RATE)
            st.wait_sent(RATE * 3)
            col.wait(lambda m: len(m) >= RATE * 2, 30)  # A is serving
            t_join = time.time()
            with kafka_worker(repo, mk.bootstrap, group_x=(), wait_assigned=False) as b:
                # The joining worker gets its share within one of the mock's
                # join phases (plus heartbeats), and A keeps the rest.
                assert wait_until(lambda: assigned_counts(b), JOIN_S + SLACK_S), \
                    ("B was never assigned", a.log()[-3000:], b.log()[-3000:])
                join_s = time.time() - t_join
                assert wait_until(lambda: len(assigned_counts(a)) >= 2, 10), a.log()[-3000:]
                time.sleep(3)  # both serve for a while
                got_b = assigned_counts(b)[-1]
                got_a = assigned_counts(a)[-1]
                print("   B assigned %d partition(s) %.1f s after it started (A now has %d)"
                      % (got_b, join_s, got_a))
                assert got_b + got_a == 16 and 6 <= got_b <= 10, (got_a, got_b)
                answered_before_kill = len(ids_answered(col))

                a.proc.send_signal(signal.SIGKILL)
                a.proc.wait()
                t_kill = time.time()
                t0 = time.time()
                rc_b = b.stop(timeout=20)
                stop_s = time.time() - t0
            taken_b = summary(b)[0]
            print("   B: exit %d %.1f s after SIGTERM, took %d jobs" % (rc_b, stop_s, taken_b))
            assert rc_b == 0, b.log()[-3000:]
            assert taken_b > 0, "the joining worker never took a job"

            # A third worker in the same group serves what is left, what the
            # stream goes on producing, and 300 jobs produced after it ends.
            with kafka_worker(repo, mk.bootstrap, group_x=(), wait_assigned=False) as c:
                st.join()
                produce_jobs(producer(mk.bootstrap), "quern.jobs",
                             [predict_job(n1 + i, "m", X) for i in range(300)])
                want = set(range(n1 + 300))
                bound = SESSION_S + JOIN_S + SLACK_S
                col.wait(lambda m: len({x.key() for x in m}) >= len(want),
                         bound - (time.time() - t_kill))
                recover_s = time.time() - t_kill
                got = ids_answered(col)
                missing = want - set(got)
                c_assigned = assigned_counts(c)
                print("   after kill -9: C assigned %s, every job answered %.1f s after the kill "
                      "(%d answered before it; bound %.0f s)"
                      % (c_assigned, recover_s, answered_before_kill, bound))
                assert not missing, ("%d jobs unanswered %.0f s after the kill"
                                     % (len(missing), recover_s), c.log()[-3000:])
                assert c_assigned and c_assigned[-1] == 16, c_assigned
                assert c.stop() == 0
        col.close()


if __name__ == "__main__":
    repo = make_repo({"m": {1: MODEL}})
    r = Runner()
    r.run(test_default_timeouts_join_crash_recover, repo)
    r.done()
