"""kafka_harness: the Kafka side of the integration tests. A Mock runs
build/quern-kafka-mock (librdkafka's mock cluster as a process, with a stdin
control channel for faults); clients are python3-confluent-kafka and kcat,
independent of quern's C code. Workers are qn_harness.Worker without ZeroMQ.
"""
import os
import subprocess
import threading
import time
import uuid

import msgpack
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from qn_harness import BUILD, Worker, predict_job  # noqa: F401  (re-exported)

MOCK = os.path.join(BUILD, "quern-kafka-mock")


class Mock:
    """A running quern-kafka-mock. cmd("down 1") waits for its "ok"."""

    def __init__(self, topics=(), brokers=1):
        args = [MOCK, "--brokers", str(brokers)]
        for t in topics:
            args += ["--topic", t]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "bootstrap", line
        self.bootstrap = line[1]
        self._lock = threading.Lock()

    def cmd(self, line):
        with self._lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            ans = self.proc.stdout.readline().strip()
        assert ans == "ok", (line, ans)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(5)
            except Exception:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The mock's group coordinator waits session.timeout.ms - 1 s for members to
# rejoin on every rebalance (even after the last member left), so tests run
# their workers with a short session timeout.
GROUP_X = ["-X", "consumer.session.timeout.ms=4000", "-X", "consumer.heartbeat.interval.ms=500"]


def kafka_worker(repo, bootstrap, *args, group="quern", topic="quern.jobs", wait_assigned=True,
                 group_x=GROUP_X, **kw):
    """A quern-worker on Kafka only; waits until it owns partitions. group_x:
    the group timeouts (GROUP_X; () for librdkafka's defaults)."""
    w = Worker(repo, "--kafka-brokers", bootstrap, "--kafka-group", group, "--kafka-topic", topic,
               *group_x, *args, zmq_bind=None, **kw)
    if wait_assigned:
        w.wait_for(r"kafka: assigned \d+ partition", 30)
    return w


def producer(bootstrap, **conf):
    c = {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    c.update(conf)
    return Producer(c)


def produce_jobs(p, topic, jobs, headers=None, keyed=True):
    """jobs: list of job dicts (or raw bytes). Flushes."""
    for i, j in enumerate(jobs):
        v = j if isinstance(j, (bytes, bytearray)) else msgpack.packb(j, use_bin_type=True)
        key = None
        if keyed and isinstance(j, dict):
            key = str(j.get("id"))
        while True:
            try:
                p.produce(topic, v, key=key, headers=headers[i] if headers else None)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(30) == 0


class Collector:
    """Consumes every partition of one or more topics from the beginning in a
    background thread, keeping every message. Partitions are assigned by
    hand (no group), so the collector itself never waits on a rebalance."""

    def __init__(self, bootstrap, topics, **conf):
        c = {"bootstrap.servers": bootstrap, "group.id": "collector-" + uuid.uuid4().hex,
             "auto.offset.reset": "earliest", "enable.auto.commit": False}
        c.update(conf)
        self.consumer = Consumer(c)
        tps = []
        for t in topics:
            md = self.consumer.list_topics(t, timeout=10).topics[t]
            assert not md.error and md.partitions, (t, md.error)
            tps += [TopicPartition(t, p, OFFSET_BEGINNING) for p in md.partitions]
        self.consumer.assign(tps)
        self.msgs = []
        self._cv = threading.Condition()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            batch = self.consumer.consume(500, 0.2)
            good = [m for m in batch if not m.error()]
            if good:
                with self._cv:
                    self.msgs.extend(good)
                    self._cv.notify_all()
        self.consumer.close()

    def wait(self, pred, timeout):
        """Waits until pred(msgs) is true; returns the messages so far."""
        deadline = time.time() + timeout
        with self._cv:
            while not pred(self.msgs):
                left = deadline - time.time()
                if left <= 0:
                    break
                self._cv.wait(min(left, 0.5))
            return list(self.msgs)

    def results(self):
        with self._cv:
            return [(m, msgpack.unpackb(m.value(), raw=False)) for m in self.msgs]

    def close(self):
        self._stop = True
        self._t.join(10)


def ids_answered(col):
    out = {}
    for m, r in col.results():
        out.setdefault(r.get("id"), []).append(r)
    return out


def committed(bootstrap, group, topic, partitions):
    """The group's committed offsets {partition: offset} (-1001: none)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    c.close()
    return {tp.partition: tp.offset for tp in tps}


class Stream:
    """Produces jobs at a steady rate in a background thread, so a fault can
    hit the middle of a stream whose rate the test knows."""

    def __init__(self, bootstrap, topic, jobs, rate):
        self.p = producer(bootstrap)
        self.topic, self.jobs, self.rate = topic, jobs, rate
        self.sent = 0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        t0 = time.time()
        for i, j in enumerate(self.jobs):
            delay = t0 + i / self.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            v = msgpack.packb(j, use_bin_type=True)
            while True:
                try:
                    self.p.produce(self.topic, v, key=str(j["id"]))
                    break
                except BufferError:
                    self.p.poll(0.05)
            self.p.poll(0)
            self.sent = i + 1
        self.p.flush(30)

    def wait_sent(self, count, timeout=60):
        deadline = time.time() + timeout
        while self.sent < count and time.time() < deadline:
            time.sleep(0.05)
        assert self.sent >= count, (self.sent, count)

    def join(self):
        self._t.join(120)
