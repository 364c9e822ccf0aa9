"""Backpressure keeps memory bounded whatever the lag: a worker with a small
queue, in-flight window and prefetch works through a backlog several times
larger than all of them, and its peak resident memory (VmHWM) grows by much
less than the backlog. Every job is answered."""
import numpy as np

from kafka_harness import Collector, Mock, ids_answered, kafka_worker, produce_jobs, producer
from qn_harness import Runner, make_repo, predict_job
import quern_model

COLS = 16384                      # 64 KiB of f32 per job
N = 2000                          # 128 MiB of backlog
PARTS = 32                        # 4 MiB a partition: under the mock's 5 MiB retention
MODEL = quern_model.random_mlp([COLS, 8, 4], ["relu", "none"], 7)
PREFETCH_KB = 8192


def status_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def test_memory_bounded_by_backpressure(repo):
    with Mock(["quern.jobs:%d" % PARTS, "quern.results:%d" % PARTS, "quern.dlq:2"]) as mk:
        with kafka_worker(repo, mk.bootstrap, "--queue-limit", "32", "--max-batch", "8",
                          "-X", "quern.max.inflight=64",
                          "-X", "consumer.queued.max.messages.kbytes=%d" % PREFETCH_KB,
                          "-X", "consumer.fetch.max.bytes=4194304",
                          "-X", "consumer.max.partition.fetch.bytes=262144") as w:
            base = status_kb(w.proc.pid, "VmRSS")
            asan = w.sanitized()
            rng = np.random.default_rng(1)
            p = producer(mk.bootstrap, **{"linger.ms": 50, "batch.size": 4 << 20,
                                          "queue.buffering.max.kbytes": 262144})
            produce_jobs(p, "quern.jobs",
                         [predict_job(i, "wide", rng.standard_normal((1, COLS)).astype(np.float32))
                          for i in range(N)])
            col = Collector(mk.bootstrap, ["quern.results"])
            col.wait(lambda m: len(m) >= N, 120)
            col.close()
            peak = status_kb(w.proc.pid, "VmHWM")
            got = ids_answered(col)
            assert set(got) == set(range(N)), sorted(set(range(N)) - set(got))[:10]
            assert all(r["status"] == "ok" for rs in got.values() for r in rs)
            assert w.stop() == 0
        backlog_kb = N * COLS * 4 // 1024
        grew = peak - base
        if asan:
            print("   AddressSanitizer build: every job answered; the RSS bound is checked "
                  "in the plain build only (+%d MiB here)" % (grew // 1024))
            return
        # prefetch + fetch responses + 64 jobs in flight + allocator slack:
        # a worker that read the backlog into memory would grow by ~128 MiB.
        assert grew < 48 * 1024, (base, peak, backlog_kb)
        print("   backlog %d MiB; worker RSS %d MiB at start, peak %d MiB (+%d MiB)"
              % (backlog_kb // 1024, base // 1024, peak // 1024, grew // 1024))


if __name__ == "__main__":
    repo = make_repo({"wide": {1: MODEL}})
    r = Runner()
    r.run(test_memory_bounded_by_backpressure, repo)
    r.done()
