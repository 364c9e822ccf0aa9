"""Debian's Prometheus server scrapes a real worker: the test writes a
config that scrapes the worker's /metrics on loopback every second, starts
`prometheus` on a free port with a throwaway TSDB, sends traffic over
ZeroMQ and HTTP, and asks Prometheus's HTTP API for quern_requests_total
until it reports what was sent. Also checks the config with promtool, and
Kafka consumer lag reaching Prometheus from librdkafka's statistics."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import numpy as np

from qn_harness import BUILD, Client, Runner, Worker, make_repo, predict_job, quern_model

LAYERS = quern_model.random_mlp([4, 8, 2], ["relu", "none"], 2)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Prometheus:
    def __init__(self, targets):
        self.dir = tempfile.mkdtemp(prefix="prom.", dir=os.path.join(BUILD, "tmp"))
        self.port = free_port()
        cfg = os.path.join(self.dir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: quern\n    static_configs:\n"
                    "      - targets: [%s]\n" % ", ".join("'%s'" % t for t in targets))
        p = subprocess.run(["promtool", "check", "config", cfg], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen(
            ["prometheus", "--config.file", cfg, "--storage.tsdb.path", os.path.join(self.dir, "data"),
             "--web.listen-address", "127.0.0.1:%d" % self.port], stdout=self.log, stderr=self.log)

    def api(self, path, **q):
        url = "http://127.0.0.1:%d/api/v1/%s?%s" % (self.port, path, urllib.parse.urlencode(q))
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())

    def query(self, expr):
        return self.api("query", query=expr)["data"]["result"]

    def wait(self, expr, pred, timeout=40):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = self.query(expr)
                if pred(last):
                    return last
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        with open(os.path.join(self.dir, "log")) as f:
            tail = f.read()[-3000:]
        raise AssertionError("prometheus: %s never satisfied; last %r\n%s" % (expr, last, tail))

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def value_of(result, **labels):
    for r in result:
        if all(r["metric"].get(k) == v for k, v in labels.items()):
            return float(r["value"][1])
    return None


def test_scraped_requests(repo):
    with Worker(repo, "--http", "127.0.0.1:0") as w:
        port = int(w.wait_for(r"http: serving on http://[^ ]+:(\d+)", 5).group(1))
        prom = Prometheus(["127.0.0.1:%d" % port])
        try:
            prom.wait("up", lambda r: value_of(r, job="quern") == 1)
            c = Client(w.endpoint)
            x = np.ones((2, 4), np.float32)
            for i in range(25):
                assert c.call(predict_job(i, "m", x + i))["status"] == "ok"
            body = json.dumps({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                                           "data": [0.5] * 8}]}).encode()
            for _ in range(5):
                req = urllib.request.Request("http://127.0.0.1:%d/v2/models/m/infer" % port, data=body)
                urllib.request.urlopen(req, timeout=10).read()
            c.call(predict_job("bad", "nope", x))
            r = prom.wait('quern_requests_total{model="m",version="1",status="ok"}',
                          lambda r: value_of(r) == 30)
            assert r[0]["metric"]["job"] == "quern"
            prom.wait('quern_requests_total{status="error"}', lambda r: value_of(r) == 1)
            prom.wait('quern_rows_total{model="m"}', lambda r: value_of(r) == 60)
            prom.wait('quern_model_info{model="m",version="1"}', lambda r: value_of(r) == 1)
            # a histogram Prometheus can compute a quantile from
            prom.wait('histogram_quantile(0.5, quern_request_duration_seconds_bucket{model="m"})',
                      lambda r: r and 0 < float(r[0]["value"][1]) < 1)
            c.close()
        finally:
            prom.close()
        assert w.stop() == 0


def lag_rows(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    rows = {}
    for l in text.splitlines():
        if l.startswith("quern_kafka_consumer_lag{"):
            rows[l.split("partition=\"")[1].split("\"")[0]] = float(l.split()[-1])
    return rows, text


def test_kafka_lag_and_dlq(tmp_root):
    # A backlog waits in a 3-partition topic before the worker starts; a
    # wide model on one thread with few jobs in flight works through it
    # slowly, so the lag librdkafka reports is seen high, then at 0. One
    # undecodable message goes to the DLQ.
    from kafka_harness import Collector, Mock, kafka_worker, producer, produce_jobs
    repo = make_repo({"wide": {1: quern_model.random_mlp([512, 2048, 2048, 8], ["relu", "relu", "none"], 1)}})
    n = 150
    with Mock(topics=["quern.jobs:3", "quern.results:1", "quern.dlq:1"]) as mock:
        x = np.ones((32, 512), np.float32)
        produce_jobs(producer(mock.bootstrap), "quern.jobs",
                     [predict_job(i, "wide", x) for i in range(n)] + [b"\xc1 not msgpack"])
        col = Collector(mock.bootstrap, ["quern.results"])
        w = kafka_worker(repo, mock.bootstrap, "--http", "127.0.0.1:0", "--threads", "1",
                         "-X", "quern.max.inflight=2", "-X", "quern.commit.interval.ms=200",
                         "-X", "consumer.statistics.interval.ms=200")
        with w:
            port = int(w.wait_for(r"http: serving on http://[^ ]+:(\d+)", 5).group(1))
            peak, rows, text = 0, {}, ""
            deadline = time.time() + 90
            while time.time() < deadline:
                rows, text = lag_rows(port)
                peak = max(peak, sum(rows.values()))
                if len(col.msgs) >= n and len(rows) == 3 and sum(rows.values()) == 0:
                    break
                time.sleep(0.1)
            assert peak >= 10, (peak, rows, w.log()[-1500:])
            assert sorted(rows) == ["0", "1", "2"] and sum(rows.values()) == 0, rows
            assert 'quern_kafka_consumer_lag{topic="quern.jobs",partition="0"}' in text
            assert "quern_kafka_dlq_total 1" in text, [l for l in text.splitlines() if "dlq" in l]
            assert w.stop() == 0
        col.close()


def main():
    r = Runner()
    for tool in ("prometheus", "promtool"):
        if not shutil.which(tool):
            print("SKIP: %s is not installed (Debian package prometheus; `make deps` installs it)" % tool)
            sys.exit(0)
    repo = make_repo({"m": {1: LAYERS}})
    r.run(test_scraped_requests, repo)
    r.run(test_kafka_lag_and_dlq, os.path.dirname(repo))
    r.done()


if __name__ == "__main__":
    main()
