"""deploy/ checked with the real tools available here (no container engine,
cluster or init system): yamllint on every YAML file, promtool on the
Prometheus config and on every PromQL expression of the Grafana dashboard,
the image's config file through the worker's own --print-config, build.sh's
shell syntax, and the Dockerfile's contract points (non-root, HEALTHCHECK on
the live path, exec-form entrypoint so the worker is PID 1)."""
import glob
import json
import os
import shutil
import subprocess
import tempfile

from qn_harness import BUILD, SRC, WORKER, Runner

DEPLOY = os.path.join(SRC, "deploy")


def need(tool):
    if not shutil.which(tool):
        raise AssertionError("%s missing: `make deps` installs it" % tool)


def test_yamllint():
    need("yamllint")
    files = sorted(glob.glob(os.path.join(DEPLOY, "**", "*.y*ml"), recursive=True))
    assert len(files) >= 6, files
    p = subprocess.run(["yamllint", "-s", "-c", os.path.join(DEPLOY, ".yamllint")] + files,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_prometheus_config():
    need("promtool")
    p = subprocess.run(["promtool", "check", "config", os.path.join(DEPLOY, "prometheus", "prometheus.yml")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_dashboard_queries():
    need("promtool")
    with open(os.path.join(DEPLOY, "grafana", "quern.json")) as f:
        d = json.load(f)
    exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
    text = " ".join(exprs)
    for series in ("quern_requests_total", "quern_request_duration_seconds_bucket", "quern_batch_rows",
                   "quern_cache_hits_total", "quern_kafka_consumer_lag"):
        assert series in text, series
    # promtool parses each expression as a recording rule's PromQL.
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": "dash:q%d" % i, "expr": e}
                                                        for i, e in enumerate(exprs)]}]}
    tmp = tempfile.mkdtemp(prefix="deploy.", dir=os.path.join(BUILD, "tmp"))
    path = os.path.join(tmp, "rules.json.yml")
    with open(path, "w") as f:
        json.dump(rules, f)
    p = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True)
    assert p.returncode == 0 and "%d rules found" % len(exprs) in p.stdout, p.stdout + p.stderr


def test_image_config_and_files():
    p = subprocess.run([WORKER, "--config", os.path.join(DEPLOY, "quern.yaml"), "--print-config"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert 'http: "0.0.0.0:8000"' in p.stdout and 'log-format: "json"' in p.stdout, p.stdout
    k8s = open(os.path.join(DEPLOY, "k8s", "quern.yaml")).read()
    cm = k8s.split("quern.yaml: |\n", 1)[1].split("---", 1)[0]
    tmp = tempfile.mkdtemp(prefix="deploy.", dir=os.path.join(BUILD, "tmp"))
    path = os.path.join(tmp, "cm.yaml")
    with open(path, "w") as f:
        f.write("\n".join(l[4:] for l in cm.splitlines()))
    p = subprocess.run([WORKER, "--config", path, "--print-config"], capture_output=True, text=True)
    assert p.returncode == 0 and 'kafka-brokers: "kafka:9092"' in p.stdout, p.stdout + p.stderr
    for kind in ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject"):
        assert "kind: %s" % kind in k8s, kind
    assert "/v2/health/ready" in k8s and "/v2/health/live" in k8s and "preStop" in k8s
    df = open(os.path.join(DEPLOY, "Dockerfile")).read()
    assert df.count("FROM debian:12") == 2 and "USER quern" in df
    assert "HEALTHCHECK" in df and "/v2/health/live" in df
    assert 'ENTRYPOINT ["/usr/local/bin/quern-worker"' in df  # exec form: PID 1 gets SIGTERM
    assert "deploy/build.sh" in df
    p = subprocess.run(["sh", "-n", os.path.join(DEPLOY, "build.sh")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    unit = os.path.join(DEPLOY, "systemd", "quern-worker.service")
    if shutil.which("systemd-analyze"):
        p = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True)
        # the binary path is not installed here; anything else is a real finding
        bad = [l for l in (p.stdout + p.stderr).splitlines() if l.strip() and "/opt/quern" not in l
               and "quern.service" not in l]
        assert not bad, bad
    else:
        print("  (systemd-analyze not installed: the unit was not verified)")


def main():
    r = Runner()
    r.run(test_yamllint)
    r.run(test_prometheus_config)
    r.run(test_dashboard_queries)
    r.run(test_image_config_and_files)
    r.done()


if __name__ == "__main__":
    main()
