#!/usr/bin/python3
"""kafka_baseline.py: what a user would otherwise write by hand to serve a
quern model from Kafka: python3-confluent-kafka + msgpack + numpy. It is the
comparison point for quern-worker's Kafka transport in bench/kafka_bench.py,
meant to be fair, not a strawman:

  * consume() takes up to --max-batch (64) messages per poll; their inputs
    are stacked into one matrix and run as one forward pass (numpy matmul =
    one sgemm per layer, weights transposed once at load: bench/baseline_worker.MLP);
  * results are real results (msgpack, outputs as a bin f32 tensor), keyed by
    job id, to the job's reply_to or --reply-topic, correlation header echoed;
  * at least once like quern: offsets are stored after the results of a poll
    were handed to the producer and committed by the auto-commit timer.

Usage:
  /usr/bin/python3 bench/kafka_baseline.py --brokers HOST:PORT \
      --model REPO/name/1/model.safetensors [--topic quern.jobs] [--group G]
"""
import argparse
import os
import signal
import sys

import msgpack
import numpy as np
from confluent_kafka import Consumer, Producer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baseline_worker import MLP, decode_inputs, error_result, model_name_of  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--model", required=True, help="path to model.safetensors")
    ap.add_argument("--topic", default="quern.jobs")
    ap.add_argument("--group", default="quern-baseline")
    ap.add_argument("--reply-topic", default="quern.results")
    ap.add_argument("--max-batch", type=int, default=64)
    a = ap.parse_args()

    mlp = MLP(a.model)
    name, version = model_name_of(a.model)
    consumer = Consumer({"bootstrap.servers": a.brokers, "group.id": a.group,
                         "auto.offset.reset": "earliest", "enable.auto.offset.store": False})
    producer = Producer({"bootstrap.servers": a.brokers, "enable.idempotence": True,
                         "linger.ms": 2})
    consumer.subscribe([a.topic])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    print("kafka_baseline: consuming %s from %s" % (a.topic, a.brokers), file=sys.stderr, flush=True)

    while not stop:
        msgs = consumer.consume(a.max_batch, 0.1)
        producer.poll(0)
        if not msgs:
            continue
        good, xs, replies = [], [], []
        for m in msgs:
            if m.error():
                continue
            hdrs = dict(m.headers() or [])
            try:
                job = msgpack.unpackb(m.value(), raw=False)
                jid = job.get("id")
                if job.get("model") != name:
                    raise LookupError("unknown_model")
                x = decode_inputs(job["inputs"])
                if x.shape[1] != mlp.in_dim:
                    raise ValueError("shape_mismatch")
                good.append((m, job, hdrs, len(xs), x.shape[0]))
                xs.append(x)
            except Exception as e:  # noqa: BLE001  (a bad job gets an error result)
                code = str(e) if str(e) in ("unknown_model", "shape_mismatch") else "bad_job"
                replies.append((a.reply_topic, None, error_result(None, code, str(e)), hdrs))
        if xs:
            y = mlp.forward(np.vstack(xs))
            row = 0
            for m, job, hdrs, _, rows in good:
                out = np.ascontiguousarray(y[row:row + rows], dtype="<f4")
                row += rows
                res = {"v": 1, "id": job["id"], "type": "result", "status": "ok", "model": name,
                       "version": version, "cached": False,
                       "outputs": {"dtype": "f32", "shape": list(out.shape), "data": out.tobytes()}}
                replies.append((job.get("reply_to") or a.reply_topic, str(job["id"]), res, hdrs))
        for topic, key, res, hdrs in replies:
            h = [("kafka_correlationId", hdrs["kafka_correlationId"])] if "kafka_correlationId" in hdrs else None
            while True:
                try:
                    producer.produce(topic, msgpack.packb(res, use_bin_type=True), key=key, headers=h)
                    break
                except BufferError:
                    producer.poll(0.01)
        for m in msgs:
            if not m.error():
                consumer.store_offsets(m)
    producer.flush(10)
    consumer.close()


if __name__ == "__main__":
    main()
