#!/usr/bin/python3
"""kafka_bench.py: Kafka throughput and latency through quern-kafka-mock.

Throughput: N single-row jobs of the 256->1024->1024->16 relu model are
produced to a fresh 32-partition job topic, then one contender consumes and
answers them; a collector (manually assigned, no group) counts results.
Jobs/s = results / (last - first result timestamp), the results' CreateTime
as stamped by the contender's producer, so neither group-join time nor the
counter's own reading speed is counted. Contenders, in the same run, each on its own fresh mock cluster:

  quern     build/quern-worker --kafka-brokers ...
  baseline  bench/kafka_baseline.py (confluent-kafka + numpy, 64 per poll)
  echo      build/bench/kafka_echo (no compute: the transport's ceiling)

Latency: jobs at a low steady rate to a running quern-worker; end-to-end
time from produce() to the result arriving at the client, under a few
producer linger / consumer fetch.wait.max.ms settings.

  /usr/bin/python3 bench/kafka_bench.py --build build [--jobs 60000] [--repeat 3]
  /usr/bin/python3 bench/kafka_bench.py --build build --latency [--rate 200]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "tools"))
import quern_model  # noqa: E402

DIMS = [int(v) for v in os.environ.get("KBENCH_DIMS", "256,1024,1024,16").split(",")]


class Mock:
    def __init__(self, build, parts):
        self.p = subprocess.Popen([os.path.join(build, "quern-kafka-mock"), "--topic",
                                   "quern.jobs:%d" % parts, "--topic", "quern.results:%d" % parts,
                                   "--topic", "quern.dlq:2"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        self.bootstrap = self.p.stdout.readline().split()[1]

    def close(self):
        self.p.stdin.close()
        self.p.wait(10)


class Counter:
    """Counts (and times) results on every partition of quern.results."""

    def __init__(self, bootstrap, keep=False):
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-counter",
                           "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        md = self.c.list_topics("quern.results", timeout=10).topics["quern.results"]
        self.c.assign([TopicPartition("quern.results", p, OFFSET_BEGINNING) for p in md.partitions])
        self.n, self.first, self.last, self.keep, self.got = 0, None, None, keep, {}
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            # poll() returns as soon as one result is there (consume(n, t)
            # would wait for n or the whole t: up to 50 ms of false latency).
            m = self.c.poll(0.05)
            now = time.time()
            if m is None:
                continue
            msgs = [m] + self.c.consume(1000, 0)
            for m in msgs:
                if m.error():
                    continue
                # CreateTime, stamped by the contender's producer: rates do not
                # depend on how fast this counter happens to read.
                ts = m.timestamp()[1] / 1000.0
                self.first = ts if self.first is None else min(self.first, ts)
                self.last = ts if self.last is None else max(self.last, ts)
                self.n += 1
                if self.keep:
                    for m in msgs:
                        if not m.error():
                            self.got[m.key()] = now
        self.c.close()

    def close(self):
        self.stop = True
        self.t.join(10)


def cpu_s(pid):
    """CPU seconds (user + system) a live process has used so far."""
    with open("/proc/%d/stat" % pid) as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def job_bytes(i, x):
    return msgpack.packb({"v": 1, "id": i, "type": "predict", "model": "bench",
                          "inputs": {"dtype": "f32", "shape": [1, x.shape[0]], "data": x.tobytes()}})


def make_jobs(n, rng):
    """The jobs, encoded up front: generating and packing them is not part
    of what is measured."""
    x = rng.standard_normal((n, DIMS[0])).astype("<f4")
    return [(job_bytes(i, x[i]), str(i)) for i in range(n)]


def fill(bootstrap, jobs):
    fill_producer(Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                            "batch.num.messages": 2000}), jobs)


def fill_producer(p, jobs):
    for i, (value, key) in enumerate(jobs):
        while True:
            try:
                p.produce("quern.jobs", value, key=key)
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def contender_cmd(name, a, repo, bootstrap):
    model = os.path.join(repo, "bench", "1", "model.safetensors")
    if name == "quern":
        # --compress: quern serves a compressed copy (the others the f32 model)
        qrepo = getattr(a, "qrepo", None) or repo
        return a.wrap.split() + [os.path.join(a.build, "quern-worker"), "--model-repo", qrepo,
                "--kafka-brokers", bootstrap] + a.quern_args.split()
    if name == "baseline":
        return ["/usr/bin/python3", os.path.join(HERE, "kafka_baseline.py"), "--brokers", bootstrap,
                "--model", model]
    return [os.path.join(a.build, "bench", "kafka_echo"), bootstrap]


def throughput(name, a, repo, seed):
    """Backlog mode (--backlog): the topic is filled first, then the contender
    starts; rate over the results' timestamps. Stream mode (default): the
    contender is up and answering first, then N jobs are produced as fast as
    the client can; rate = N / (first job produced .. last result stamped)."""
    mk = Mock(a.build, a.partitions)
    rng = np.random.default_rng(seed)
    try:
        cpu = {}
        jobs = make_jobs(a.jobs, rng)
        if a.backlog:
            fill(mk.bootstrap, jobs)
        cnt = Counter(mk.bootstrap)
        log = open(a.log, "a") if a.log else subprocess.DEVNULL
        proc = subprocess.Popen(contender_cmd(name, a, repo, mk.bootstrap),
                                stdout=subprocess.DEVNULL, stderr=log)
        want = a.jobs
        if not a.backlog:
            p = Producer({"bootstrap.servers": mk.bootstrap, "linger.ms": 5})
            x = rng.standard_normal((1, DIMS[0])).astype("<f4")
            t_end = time.time() + 30
            while cnt.n == 0 and time.time() < t_end:  # warm-up: one answered job
                p.produce("quern.jobs", job_bytes(-1, x[0]), key="-1")
                p.flush(1)
                time.sleep(0.5)
            base = cnt.n
            time.sleep(1.0)
            base = cnt.n
            want = base + a.jobs
            cpu = {"contender": cpu_s(proc.pid), "mock": cpu_s(mk.p.pid), "client": cpu_s(os.getpid())}
            t0 = time.time()
            fill_producer(p, jobs)
            t_prod = time.time() - t0
        deadline = time.time() + a.timeout
        while cnt.n < want and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        if cpu:  # CPU seconds spent during the measured stretch
            cpu = {"contender": cpu_s(proc.pid) - cpu["contender"],
                   "mock": cpu_s(mk.p.pid) - cpu["mock"], "client": cpu_s(os.getpid()) - cpu["client"]}
            print("      cpu s: %s; producing took %.2f s" % (", ".join("%s %.2f" % kv for kv in cpu.items()), t_prod), flush=True)
        proc.terminate()
        proc.wait(30)
        cnt.close()
        if cnt.n < want:
            return None
        if a.backlog:
            return (cnt.n - 1) / (cnt.last - cnt.first)
        return a.jobs / (cnt.last - t0)
    finally:
        mk.close()


def latency(a, repo, extra):
    mk = Mock(a.build, a.partitions)
    try:
        cnt = Counter(mk.bootstrap, keep=True)
        log = tempfile.TemporaryFile(mode="w+")
        proc = subprocess.Popen(contender_cmd("quern", a, repo, mk.bootstrap) + extra,
                                stdout=subprocess.DEVNULL, stderr=log)
        p = Producer({"bootstrap.servers": mk.bootstrap, "linger.ms": 0})
        x = np.random.default_rng(1).standard_normal((1, DIMS[0])).astype("<f4")
        time.sleep(6)  # group join (the mock waits 3 s)
        # warm-up until answers flow
        p.produce("quern.jobs", job_bytes(-1, x[0]), key="-1")
        p.flush(5)
        t_end = time.time() + 10
        while b"-1" not in cnt.got and time.time() < t_end:
            time.sleep(0.01)
        sent = {}
        n = int(a.rate * a.seconds)
        t0 = time.time()
        for i in range(n):
            d = t0 + i / a.rate - time.time()
            if d > 0:
                time.sleep(d)
            sent[str(i).encode()] = time.time()
            p.produce("quern.jobs", job_bytes(i, x[0]), key=str(i))
            p.poll(0)
        p.flush(5)
        t_end = time.time() + 10
        while len([k for k in sent if k in cnt.got]) < n and time.time() < t_end:
            time.sleep(0.05)
        proc.terminate()
        proc.wait(30)
        cnt.close()
        lat = sorted((cnt.got[k] - t) * 1000 for k, t in sent.items() if k in cnt.got)
        if len(lat) < n:
            return None
        q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]  # noqa: E731
        return q(0.5), q(0.9), q(0.99)
    finally:
        mk.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--jobs", type=int, default=60000)
    ap.add_argument("--partitions", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--which", default="quern,baseline,echo")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--quern-args", default="", help="extra quern-worker flags")
    ap.add_argument("--compress", default="",
                    help="quern serves the model compressed by 'quern compress IN OUT ARGS', e.g. '--int8'")
    ap.add_argument("--wrap", default="", help="prefix for the quern command, e.g. 'perf record -o F --'")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--backlog", action="store_true", help="fill the topic before starting")
    ap.add_argument("--log", help="append the contenders' stderr to this file")
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args()

    repo = tempfile.mkdtemp(prefix="kbench.")
    os.makedirs(os.path.join(repo, "bench", "1"))
    quern_model.write_mlp(os.path.join(repo, "bench", "1", "model.safetensors"),
                          quern_model.random_mlp(DIMS, ["relu"] * (len(DIMS) - 2) + ["none"], 1))
    if a.compress:
        a.qrepo = tempfile.mkdtemp(prefix="kbench-c.")
        os.makedirs(os.path.join(a.qrepo, "bench", "1"))
        subprocess.run([os.path.join(a.build, "quern"), "compress",
                        os.path.join(repo, "bench", "1", "model.safetensors"),
                        os.path.join(a.qrepo, "bench", "1", "model.safetensors")] + a.compress.split(),
                       check=True, stdout=subprocess.DEVNULL)
        print("quern serves the model compressed with: %s" % a.compress)
    if a.latency:
        settings = [("defaults (linger 2, fetch.wait 100)", []),
                    ("linger 0", ["-X", "producer.linger.ms=0"]),
                    ("linger 5 (librdkafka default)", ["-X", "producer.linger.ms=5"]),
                    ("fetch.wait 10", ["-X", "consumer.fetch.wait.max.ms=10"]),
                    ("fetch.wait 500 (librdkafka default)", ["-X", "consumer.fetch.wait.max.ms=500"])]
        print("end-to-end latency, %g jobs/s for %g s, ms (p50 / p90 / p99)" % (a.rate, a.seconds))
        for label, extra in settings:
            rs = [latency(a, repo, extra) for _ in range(a.repeat)]
            rs = [r for r in rs if r]
            if not rs:
                print("  %-40s failed" % label)
                continue
            med = [statistics.median(r[i] for r in rs) for i in range(3)]
            print("  %-40s %6.1f / %6.1f / %6.1f   (%d runs)" % (label, *med, len(rs)), flush=True)
        return

    names = a.which.split(",")
    res = {n: [] for n in names}
    for r in range(a.repeat):
        for n in names:
            v = throughput(n, a, repo, r)
            res[n].append(v)
            print("run %d %-9s %s" % (r + 1, n, "%.0f jobs/s" % v if v else "did not finish"),
                  flush=True)
    med = {n: statistics.median([v for v in vs if v]) for n, vs in res.items() if any(vs)}
    print("\nmedian of %d runs, %d single-row jobs, %d partitions, %s mode:"
          % (a.repeat, a.jobs, a.partitions, "backlog" if a.backlog else "stream"))
    for n in names:
        if n in med:
            print("  %-9s %8.0f jobs/s" % (n, med[n]))
    if "quern" in med and "baseline" in med:
        print("  quern / baseline = %.2f" % (med["quern"] / med["baseline"]))
    if "quern" in med and "echo" in med:
        print("  quern / echo     = %.2f" % (med["quern"] / med["echo"]))


if __name__ == "__main__":
    main()
