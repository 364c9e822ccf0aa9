"""quern_client: call a quern worker from Python; messages as schemas/job.md and schemas/result.md describe them.

numpy in, numpy out (float32 [rows, cols]); every error code raises
QuernError (attributes code, message) or its subclass named after the code
(UnknownModelError for "unknown_model", ...).

    from quern_client import ZmqClient, KafkaClient, HttpClient
    with ZmqClient("tcp://127.0.0.1:5555") as c:
        y = c.predict("digits", x)
        ys = c.predict_many("digits", [x1, x2])     # pipelined
    h = HttpClient("http://127.0.0.1:8000")       # Open Inference Protocol
    k = KafkaClient("broker:9092", topic="quern.jobs")
"""
import itertools
import json
import os
import time
import urllib.error
import urllib.request
import uuid

import msgpack
import numpy as np

__all__ = ["QuernError", "ZmqClient", "KafkaClient", "HttpClient", "ERRORS"]


class QuernError(Exception):
    """A non-ok result: code is the contract's error code, message the worker's text."""

    code = "error"

    def __init__(self, code, message, result=None):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message
        self.result = result


def _cls(code):
    name = "".join(w.capitalize() for w in code.split("_")) + "Error"
    return type(name, (QuernError,), {"code": code})


ERRORS = {c: _cls(c) for c in ("bad_message", "bad_job", "unknown_model", "unknown_version",
                              "shape_mismatch", "too_large", "overloaded", "expired", "internal",
                              "timeout")}
globals().update({c.__name__: c for c in ERRORS.values()})
__all__ += [c.__name__ for c in ERRORS.values()]


def _raise(code, message, result=None):
    raise ERRORS.get(code, QuernError)(code, message, result)


def _tensor(x):
    a = np.ascontiguousarray(x, dtype="<f4")
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise ValueError("inputs must be [rows, cols], got shape %r" % (a.shape,))
    return {"dtype": "f32", "shape": list(a.shape), "data": a.tobytes()}


def _outputs(res):
    t = res["outputs"]
    return np.frombuffer(t["data"], dtype="<f4").reshape(t["shape"]).copy()


def _check(res):
    if res.get("status") != "ok":
        err = res.get("error") or {}
        _raise(err.get("code", res.get("status", "error")), err.get("message", ""), res)
    return res


def _predict_job(jid, model, x, version, **kw):
    job = {"v": 1, "id": jid, "type": "predict", "model": model, "inputs": _tensor(x)}
    if version:
        job["version"] = int(version)
    job.update({k: v for k, v in kw.items() if v is not None})
    return job


def _train_job(jid, model, x, y, loss, optimizer, epochs, batch_size, **kw):
    job = {"v": 1, "id": jid, "type": "train", "model": model, "x": _tensor(x), "y": _tensor(y),
           "loss": loss, "optimizer": optimizer, "epochs": int(epochs), "batch_size": int(batch_size)}
    for k, v in kw.items():
        if v is None:
            continue
        job[k] = _tensor(v) if k in ("x_val", "y_val") else v
    return job


class ZmqClient:
    """A DEALER socket: one request per message, many in flight, results
    matched to requests by id."""

    def __init__(self, endpoint, context=None):
        import zmq
        self._zmq = zmq
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._early = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def _next_id(self):
        return "%s-%d" % (self._prefix, next(self._ids))

    def _send(self, job):
        self.sock.send(msgpack.packb(job, use_bin_type=True))

    def _recv(self, deadline):
        left = deadline - time.time()
        if left <= 0 or not self.sock.poll(int(left * 1000)):
            _raise("timeout", "no result within the timeout")
        return msgpack.unpackb(self.sock.recv_multipart()[-1], raw=False)

    def _wait(self, jid, deadline, on_progress=None):
        while True:
            res = self._early.pop(jid, None) or self._recv(deadline)
            if res.get("id") != jid:
                self._early[res.get("id")] = res
                continue
            if res.get("type") == "progress":
                if on_progress:
                    on_progress(res)
                continue
            return res

    def predict(self, model, x, version=None, timeout=10.0, **kw):
        """x: float32 [rows, cols] -> [rows, out]. kw: priority, deadline_ms, cache."""
        jid = self._next_id()
        self._send(_predict_job(jid, model, x, version, **kw))
        return _outputs(_check(self._wait(jid, time.time() + timeout)))

    def predict_many(self, model, xs, version=None, timeout=60.0, window=256, **kw):
        """Pipelined: up to window jobs in flight; results in the order of xs."""
        deadline = time.time() + timeout
        ids = [self._next_id() for _ in xs]
        index = {jid: i for i, jid in enumerate(ids)}
        out = [None] * len(xs)
        sent = done = 0
        while done < len(xs):
            while sent < len(xs) and sent - done < window:
                self._send(_predict_job(ids[sent], model, xs[sent], version, **kw))
                sent += 1
            res = self._recv(deadline)
            i = index.get(res.get("id"))
            if i is None or res.get("type") == "progress":
                continue
            out[i] = _outputs(_check(res))
            done += 1
        return out

    def train(self, model, x, y, loss, optimizer, epochs, batch_size, on_progress=None, timeout=3600.0, **kw):
        """Submits a train job; on_progress(msg) for each progress message;
        returns the final result map (new version, metrics)."""
        jid = self._next_id()
        self._send(_train_job(jid, model, x, y, loss, optimizer, epochs, batch_size, **kw))
        return _check(self._wait(jid, time.time() + timeout, on_progress))


class HttpClient:
    """Open Inference Protocol (KServe v2 / Triton HTTP JSON) over urllib."""

    def __init__(self, url):
        self.url = url.rstrip("/")

    def _call(self, path, body=None, timeout=10.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                msg = json.loads(raw).get("error", "")
            except ValueError:
                msg = raw.decode(errors="replace")
            code = msg.split(":", 1)[0] if msg.split(":", 1)[0] in ERRORS else {
                400: "bad_job", 404: "unknown_model", 413: "too_large", 429: "overloaded",
                503: "overloaded", 504: "expired"}.get(e.code, "internal")
            _raise(code, msg.split(": ", 1)[1] if msg.startswith(code + ": ") else msg)

    def live(self):
        try:
            return self._call("/v2/health/live")[0] == 200
        except QuernError:
            return False

    def ready(self):
        try:
            return self._call("/v2/health/ready")[0] == 200
        except QuernError:
            return False

    def metadata(self, model, version=None):
        return self._call("/v2/models/%s%s" % (model, "/versions/%d" % version if version else ""))[1]

    def predict(self, model, x, version=None, timeout=10.0, id=None):
        a = np.ascontiguousarray(x, dtype=np.float32)
        if a.ndim == 1:
            a = a.reshape(1, -1)
        body = {"inputs": [{"name": "input", "shape": list(a.shape), "datatype": "FP32",
                            "data": a.reshape(-1).tolist()}]}
        if id is not None:
            body["id"] = str(id)
        path = "/v2/models/%s%s/infer" % (model, "/versions/%d" % version if version else "")
        res = self._call(path, body, timeout)[1]
        o = res["outputs"][0]
        return np.array(o["data"], dtype=np.float64).astype(np.float32).reshape(o["shape"])


class KafkaClient:
    """Jobs to a Kafka topic; results on a reply topic of its own (created
    when missing), matched by id."""

    def __init__(self, brokers, topic="quern.jobs", reply_topic=None, **conf):
        from confluent_kafka import Consumer, Producer
        self.topic = topic
        self.reply_topic = reply_topic or "quern.client.%s" % uuid.uuid4().hex[:12]
        base = {"bootstrap.servers": brokers}
        base.update(conf)
        self.producer = Producer(dict(base, **{"linger.ms": 1}))
        # The producer's metadata request lets the brokers auto-create the
        # reply topic (auto.create.topics.enable, Kafka's default).
        deadline = time.time() + 15
        while True:
            md = self.producer.list_topics(self.reply_topic, timeout=5).topics.get(self.reply_topic)
            if md is not None and not md.error and md.partitions:
                break
            if time.time() > deadline:
                raise QuernError("internal", "reply topic %s was not created (auto.create.topics.enable "
                                 "off?): create it and pass reply_topic=" % self.reply_topic)
            time.sleep(0.2)
        self.consumer = Consumer(dict(base, **{"group.id": "quern-client-" + uuid.uuid4().hex,
                                               "auto.offset.reset": "earliest", "enable.auto.commit": False}))
        from confluent_kafka import TopicPartition
        self.consumer.assign([TopicPartition(self.reply_topic, p, 0) for p in md.partitions])
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._early = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.producer.flush(10)
        self.consumer.close()

    def _send(self, job):
        job["reply_to"] = self.reply_topic
        self.producer.produce(self.topic, msgpack.packb(job, use_bin_type=True), key=str(job["id"]))
        self.producer.poll(0)

    def _recv(self, deadline):
        while True:
            left = deadline - time.time()
            if left <= 0:
                _raise("timeout", "no result within the timeout")
            m = self.consumer.poll(min(left, 0.5))
            if m is None or m.error():
                continue
            return msgpack.unpackb(m.value(), raw=False)

    def _wait(self, jid, deadline, on_progress=None):
        self.producer.flush(max(0.1, deadline - time.time()))
        while True:
            res = self._early.pop(jid, None) or self._recv(deadline)
            if res.get("id") != jid:
                self._early[res.get("id")] = res
                continue
            if res.get("type") == "progress":
                if on_progress:
                    on_progress(res)
                continue
            return res

    def predict(self, model, x, version=None, timeout=30.0, **kw):
        jid = "%s-%d" % (self._prefix, next(self._ids))
        self._send(_predict_job(jid, model, x, version, **kw))
        return _outputs(_check(self._wait(jid, time.time() + timeout)))

    def predict_many(self, model, xs, version=None, timeout=120.0, **kw):
        ids = ["%s-%d" % (self._prefix, next(self._ids)) for _ in xs]
        for jid, x in zip(ids, xs):
            self._send(_predict_job(jid, model, x, version, **kw))
        deadline = time.time() + timeout
        return [_outputs(_check(self._wait(jid, deadline))) for jid in ids]

    def train(self, model, x, y, loss, optimizer, epochs, batch_size, on_progress=None, timeout=3600.0, **kw):
        jid = "%s-%d" % (self._prefix, next(self._ids))
        self._send(_train_job(jid, model, x, y, loss, optimizer, epochs, batch_size, **kw))
        return _check(self._wait(jid, time.time() + timeout, on_progress))
