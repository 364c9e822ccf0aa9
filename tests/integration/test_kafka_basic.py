"""Kafka transport, the plain paths, against quern-kafka-mock with
python3-confluent-kafka and kcat as clients: default and per-job reply
topics, header request-reply (kafka_replyTopic, kafka_replyPartition,
kafka_correlationId), keys, cache hits, poison messages to the DLQ with
nothing else lost, the embedded `--kafka-brokers mock`, and -X handling."""
import os
import struct
import subprocess
import tempfile
import time

import msgpack
import numpy as np

from kafka_harness import Collector, Mock, committed, kafka_worker, produce_jobs, producer
from qn_harness import WORKER, Runner, Worker, cache_stats, make_repo, outputs, predict_job, quern_model

LAYERS = quern_model.random_mlp([16, 32, 4], ["relu", "none"], 7)
TOPICS = ["quern.jobs:8", "quern.results:4", "quern.dlq:2", "alt.results:3", "hdr.results:5"]


def rows(i, n=1):
    return np.random.default_rng(i).standard_normal((n, 16)).astype(np.float32)


def test_reply_topics_and_keys(repo):
    with Mock(TOPICS) as mk:
        with kafka_worker(repo, mk.bootstrap) as w:
            col = Collector(mk.bootstrap, ["quern.results", "alt.results"])
            jobs = [predict_job(i, "m", rows(i, 1 + i % 3)) for i in range(60)]
            for i in range(0, 60, 3):
                jobs[i]["reply_to"] = "alt.results"
            jobs.append(predict_job("str-id-é", "m", rows(99)))
            produce_jobs(producer(mk.bootstrap), "quern.jobs", jobs)
            msgs = col.wait(lambda m: len(m) >= 61, 30)
            col.close()
            assert len(msgs) == 61, len(msgs)
            for m, r in col.results():
                jid = r["id"]
                assert r["status"] == "ok", r
                x = rows(99) if jid == "str-id-é" else rows(jid, 1 + jid % 3)
                np.testing.assert_allclose(outputs(r), quern_model.forward(LAYERS, x), rtol=2e-4,
                                           atol=2e-5)
                assert m.key() == str(jid).encode(), (m.key(), jid)
                want = "alt.results" if isinstance(jid, int) and jid % 3 == 0 else "quern.results"
                assert m.topic() == want, (jid, m.topic())
            assert w.stop() == 0
        # Every job committed at shutdown: offsets sum to the jobs produced.
        offs = committed(mk.bootstrap, "quern", "quern.jobs", 8)
        assert sum(max(o, 0) for o in offs.values()) == 61, offs


def cache_entries(cdir):
    return int(cache_stats(cdir).get("entries", 0))


def test_cache_hits_over_kafka(repo):
    """With --cache-dir, a repeated input arriving over Kafka is answered from
    the cache (cached: true, the same bits), under its own id and key, and
    every job is still committed."""
    cdir = tempfile.mkdtemp(prefix="kcache.")
    with Mock(TOPICS) as mk:
        with kafka_worker(repo, mk.bootstrap, "--cache-dir", cdir) as w:
            col = Collector(mk.bootstrap, ["quern.results"])
            p = producer(mk.bootstrap)
            produce_jobs(p, "quern.jobs", [predict_job(i, "m", rows(i)) for i in range(20)])
            col.wait(lambda m: len(m) >= 20, 30)
            # the same inputs again, new ids, once the first answers are stored
            deadline = time.time() + 10
            while cache_entries(cdir) < 20 and time.time() < deadline:
                time.sleep(0.05)
            produce_jobs(p, "quern.jobs", [predict_job(100 + i, "m", rows(i)) for i in range(20)])
            col.wait(lambda m: len(m) >= 40, 30)
            col.close()
            got = {r["id"]: (m, r) for m, r in col.results()}
            assert set(got) == set(range(20)) | set(range(100, 120)), sorted(got)
            for i in range(20):
                first, again = got[i][1], got[100 + i][1]
                assert not first.get("cached") and again.get("cached") is True, (first, again)
                assert outputs(again).tobytes() == outputs(first).tobytes()
                assert got[100 + i][0].key() == str(100 + i).encode()
            assert w.stop() == 0
        offs = committed(mk.bootstrap, "quern", "quern.jobs", 8)
        assert sum(max(o, 0) for o in offs.values()) == 40, offs


def test_header_request_reply(repo):
    """Spring's ReplyingKafkaTemplate: reply topic and partition in headers,
    correlation id echoed."""
    with Mock(TOPICS) as mk:
        with kafka_worker(repo, mk.bootstrap) as w:
            col = Collector(mk.bootstrap, ["hdr.results", "quern.results"])
            jobs, hdrs = [], []
            for i in range(20):
                jobs.append(predict_job(i, "m", rows(i)))
                h = [("kafka_replyTopic", b"hdr.results"), ("kafka_correlationId", os.urandom(16))]
                if i % 2:
                    h.append(("kafka_replyPartition", struct.pack(">i", 3)))
                hdrs.append(h)
            # reply_to in the job wins over the header
            jobs.append(predict_job(100, "m", rows(100), reply_to="quern.results"))
            hdrs.append([("kafka_replyTopic", b"hdr.results"), ("kafka_correlationId", b"X")])
            produce_jobs(producer(mk.bootstrap), "quern.jobs", jobs, headers=hdrs)
            col.wait(lambda m: len(m) >= 21, 30)
            col.close()
            res = col.results()
            assert len(res) == 21
            for m, r in res:
                h = dict(m.headers() or [])
                if r["id"] == 100:
                    assert m.topic() == "quern.results" and h["kafka_correlationId"] == b"X"
                    continue
                assert m.topic() == "hdr.results", m.topic()
                assert h["kafka_correlationId"] == dict(hdrs[r["id"]])["kafka_correlationId"]
                if r["id"] % 2:
                    assert m.partition() == 3, (r["id"], m.partition())
            assert w.stop() == 0


def test_poison_to_dlq(repo):
    """Bad messages: an error result where an id can be read (or a
    correlation header is present), the original bytes in the DLQ with
    headers naming the error and the source, offsets committed, and every
    good job around them answered."""
    poison = {
        "garbage": b"\xc1\xc1 not msgpack",
        "not_a_map": msgpack.packb([1, 2, 3]),
        "no_model": msgpack.packb({"v": 1, "id": "p-nomodel", "type": "predict",
                                   "inputs": [[1.0] * 16]}),
        "unknown_model": msgpack.packb(predict_job("p-unknown", "nope", rows(1)), use_bin_type=True),
        "shape": msgpack.packb(predict_job("p-shape", "m", np.ones((2, 5), np.float32)),
                               use_bin_type=True),
        "empty": b"",
    }
    expect_code = {"garbage": "bad_message", "not_a_map": "bad_message", "no_model": "bad_job",
                   "unknown_model": "unknown_model", "shape": "shape_mismatch", "empty": "bad_message"}
    with Mock(TOPICS) as mk:
        with kafka_worker(repo, mk.bootstrap) as w:
            col = Collector(mk.bootstrap, ["quern.results", "quern.dlq"])
            msgs, hdrs = [], []
            n = 0
            for name, raw in poison.items():
                for _ in range(3):
                    msgs.append(predict_job(n, "m", rows(n)))
                    hdrs.append(None)
                    n += 1
                msgs.append(raw)
                hdrs.append([("poison", name.encode())] +
                            ([("kafka_correlationId", b"corr-garbage")] if name == "garbage" else []))
            produce_jobs(producer(mk.bootstrap), "quern.jobs", msgs, headers=hdrs)
            # n good results + error results for: garbage (corr header), no_model,
            # unknown_model, shape; + 6 DLQ copies
            total = n + 4 + len(poison)
            col.wait(lambda m: len(m) >= total, 30)
            col.close()
            dlq = [m for m in col.msgs if m.topic() == "quern.dlq"]
            res = [(m, msgpack.unpackb(m.value(), raw=False)) for m in col.msgs
                   if m.topic() == "quern.results"]
            assert len(dlq) == len(poison), [m.value() for m in dlq]
            for m in dlq:
                h = dict(m.headers())
                name = h["poison"].decode()
                assert m.value() in (poison[name], None) and (m.value() or b"") == poison[name]
                assert h["quern.dlq.reason"] == b"invalid_job"
                assert h["quern.error.code"].decode() == expect_code[name], (name, h)
                assert h["quern.error.message"]
                assert h["quern.source.topic"] == b"quern.jobs"
                p, o = int(h["quern.source.partition"]), int(h["quern.source.offset"])
                assert 0 <= p < 8 and o >= 0
            ok = {r["id"] for m, r in res if r["status"] == "ok"}
            assert ok == set(range(n)), sorted(ok)
            errs = {(r.get("id"), r["error"]["code"]) for m, r in res if r["status"] == "error"}
            assert errs == {(None, "bad_message"), ("p-nomodel", "bad_job"),
                            ("p-unknown", "unknown_model"), ("p-shape", "shape_mismatch")}, errs
            garbage_reply = [m for m, r in res if r["status"] == "error" and r.get("id") is None]
            assert dict(garbage_reply[0].headers())["kafka_correlationId"] == b"corr-garbage"
            assert w.stop() == 0
        offs = committed(mk.bootstrap, "quern", "quern.jobs", 8)
        assert sum(max(o, 0) for o in offs.values()) == len(msgs), offs


def test_embedded_mock_with_kcat(repo):
    """--kafka-brokers mock: the bootstrap list is on stderr and kcat (an
    independent client) can produce jobs to it and read results back."""
    with Worker(repo, "--kafka-brokers", "mock", "-X", "quern.mock.partitions=4",
                zmq_bind=None) as w:
        bs = w.wait_for(r"bootstrap\.servers=(\S+)", 10).group(1)
        w.wait_for(r"kafka: assigned 4 partition", 30)
        d = tempfile.mkdtemp()
        for i in range(3):
            path = os.path.join(d, "job%d" % i)
            with open(path, "wb") as f:
                f.write(msgpack.packb(predict_job("kcat-%d" % i, "m", rows(i)), use_bin_type=True))
            subprocess.run(["kcat", "-b", bs, "-t", "quern.jobs", "-P", "-k", "k%d" % i, path],
                           check=True, timeout=30)
        seen = {}
        for _ in range(20):
            p = subprocess.run(["kcat", "-b", bs, "-t", "quern.results", "-C", "-o", "beginning",
                                "-e", "-q", "-f", "%k\n"], capture_output=True, text=True, timeout=30)
            seen = set(p.stdout.split())
            if len(seen) >= 3:
                break
        assert seen == {"kcat-0", "kcat-1", "kcat-2"}, p.stdout + p.stderr
        assert w.stop() == 0


def test_config_errors(repo):
    def run(*args):
        p = subprocess.run([WORKER, "--model-repo", repo, "--kafka-brokers", "mock"] + list(args),
                           capture_output=True, text=True, timeout=30)
        return p.returncode, p.stderr
    rc, err = run("-X", "no.such.property=1")
    assert rc == 1 and "no.such.property" in err, (rc, err)
    rc, err = run("-X", "quern.max.inflight=0")
    assert rc == 1 and "quern.max.inflight" in err, (rc, err)
    rc, err = run("-X", "quern.bogus=1")
    assert rc == 1 and "unknown setting" in err, (rc, err)
    rc, err = run("-X", "producer.linger.ms=banana")
    assert rc == 1 and "linger.ms" in err, (rc, err)


if __name__ == "__main__":
    repo = make_repo({"m": {1: LAYERS}})
    r = Runner()
    r.run(test_reply_topics_and_keys, repo)
    r.run(test_cache_hits_over_kafka, repo)
    r.run(test_header_request_reply, repo)
    r.run(test_poison_to_dlq, repo)
    r.run(test_embedded_mock_with_kcat, repo)
    r.run(test_config_errors, repo)
    r.done()
