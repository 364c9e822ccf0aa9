"""Train jobs over Kafka (quern-kafka-mock, confluent-kafka clients):
progress messages and the result on the reply topic, the offset committed
only once the result is acknowledged; a worker killed (SIGKILL) in the middle
of training leaves no version and no partial files, and so does SIGTERM
(the interrupted job is handed back: no answer, offset uncommitted); the job
is redelivered to the next worker, which trains it once; a redelivered job that already made
its version is answered with it; a second worker on the same repository
serves the new version."""
import os
import signal
import time

import numpy as np

from kafka_harness import Collector, Mock, committed, kafka_worker, produce_jobs, producer
from qn_harness import Client, Runner, Worker, make_repo, outputs, quern_model, tensor

TOPICS = ["quern.jobs:2", "quern.results:2", "quern.dlq:1"]


def job(jid, epochs, rows=1024, hidden=2048):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((rows, 128)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    init = {"input_dim": 128, "layers": [{"units": hidden, "activation": "relu"},
                                         {"units": 2, "activation": "softmax"}], "seed": 1}
    return {"v": 1, "id": jid, "type": "train", "model": "k", "init": init, "x": tensor(x), "y": tensor(y),
            "loss": "cross_entropy", "optimizer": {"name": "adam", "lr": 1e-3}, "epochs": epochs,
            "batch_size": 64, "seed": 7}, x


def versions(repo):
    d = os.path.join(repo, "k")
    return sorted(int(v) for v in os.listdir(d) if v.isdigit()) if os.path.isdir(d) else []


def hidden(repo):
    d = os.path.join(repo, "k")
    return [v for v in os.listdir(d) if v.startswith(".")] if os.path.isdir(d) else []


def by_id(col, jid):
    return [r for _, r in col.results() if r.get("id") == jid]


def test_train_over_kafka(repo):
    with Mock(TOPICS) as mk:
        col = Collector(mk.bootstrap, ["quern.results"])
        p = producer(mk.bootstrap, **{"message.max.bytes": 8 << 20})
        kill_job, x = job("long-1", epochs=40)
        # 1. killed in the middle: no version, nothing half-written
        w = kafka_worker(repo, mk.bootstrap, "-X", "fetch.message.max.bytes=8388608")
        produce_jobs(p, "quern.jobs", [kill_job])
        col.wait(lambda m: any(r.get("type") == "progress" for r in by_id(col, "long-1")), 60)
        assert by_id(col, "long-1"), "no progress before the kill"
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait()
        assert not any(r.get("type") == "result" for r in by_id(col, "long-1"))
        assert versions(repo) == [] and hidden(repo) == [], (versions(repo), hidden(repo))
        # 2. SIGTERM in the middle: the worker exits 0 without answering the
        #    interrupted job and leaves it uncommitted (handed back)
        w1b = kafka_worker(repo, mk.bootstrap)
        w1b.wait_for(r"train: training 'k'", 60)  # the job came back after the kill
        time.sleep(0.5)
        assert w1b.stop() == 0
        assert "handed back unfinished" in w1b.log(), w1b.log()[-2000:]
        assert not any(r.get("type") == "result" for r in by_id(col, "long-1")), by_id(col, "long-1")[-1]
        assert versions(repo) == [] and hidden(repo) == []
        offs = committed(mk.bootstrap, "quern", "quern.jobs", 2)
        assert sum(max(o, 0) for o in offs.values()) == 0, offs
        # 3. the next worker of the group gets it again and trains it once
        with kafka_worker(repo, mk.bootstrap) as w2:
            col.wait(lambda m: any(r.get("type") == "result" for r in by_id(col, "long-1")), 120)
            finals = [r for r in by_id(col, "long-1") if r.get("type") == "result"]
            assert len(finals) == 1 and finals[0]["status"] == "ok", finals
            assert finals[0]["version"] == 1 and versions(repo) == [1]
            prog = [r for r in by_id(col, "long-1") if r.get("type") == "progress"]
            assert prog and all({"epoch", "step", "loss", "lr"} <= set(r) for r in prog)
            # 4. redelivered after it was done (same id, same data): the same version
            produce_jobs(p, "quern.jobs", [kill_job])
            col.wait(lambda m: len([r for r in by_id(col, "long-1") if r.get("type") == "result"]) >= 2, 60)
            finals = [r for r in by_id(col, "long-1") if r.get("type") == "result"]
            assert len(finals) == 2 and finals[1]["version"] == 1 and finals[1].get("repeated"), finals
            assert versions(repo) == [1]
            assert w2.stop() == 0
        # every job committed (the killed delivery was not: it came back)
        offs = committed(mk.bootstrap, "quern", "quern.jobs", 2)
        assert sum(max(o, 0) for o in offs.values()) == 2, offs
        col.close()
    # 5. a second worker on the same repository serves the trained version
    with Worker(repo) as w3:
        c = Client(w3.endpoint)
        r = c.call({"v": 1, "id": 1, "type": "predict", "model": "k", "inputs": tensor(x[:4])})
        assert r["status"] == "ok" and r["version"] == 1, r
        ref = quern_model.forward(quern_model.load_mlp(os.path.join(repo, "k", "1", "model.safetensors")), x[:4])
        np.testing.assert_allclose(outputs(r), ref, rtol=1e-4, atol=1e-5)
        c.close()
        assert w3.stop() == 0


def main():
    t = Runner()
    t.run(test_train_over_kafka, make_repo({}))
    t.done()


if __name__ == "__main__":
    main()
