"""Training benchmark (bench/README.md, "Training"), one run, three parts:

1. quern's training step (build/bench/bench_train: lib/train.c directly,
   one thread, as the worker runs it) and, in the same process, the bare
   cblas_sgemm calls the step is made of on the same shapes: GFLOP/s and
   the fraction of the GEMM rate the whole step reaches;
2. torch 1.13 (Debian's python3-torch) on CPU with --torch-threads threads,
   the same model (256->1024->1024->16 relu, softmax folded into
   CrossEntropyLoss), Adam, batch 256, 10 epochs over 4,096 rows, shuffled;
3. p50/p99 latency of a small predict job (1 row through a 256->64->16 model)
   against a real worker, idle, then while the worker trains the benchmark
   model from a train job (at the trainer's default niceness 10, and at 0).

Usage: /usr/bin/python3 bench/train_bench.py [--build build] [--torch-threads 2]
                                             [--epochs 10] [--skip-latency]
"""
import argparse
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))

DIMS = [256, 1024, 1024, 16]
ROWS, BATCH = 4096, 256


def flops(epochs):
    per_step = 0
    for i in range(len(DIMS) - 1):
        f = 2 * BATCH * DIMS[i] * DIMS[i + 1]
        per_step += f * (2 if i == 0 else 3)
    return per_step * (ROWS // BATCH) * epochs


def quern_part(build, epochs):
    out = subprocess.run([os.path.join(build, "bench", "bench_train"), "--dims", ",".join(map(str, DIMS)),
                          "--rows", str(ROWS), "--epochs", str(epochs), "--batch", str(BATCH), "--reps", "3"],
                         capture_output=True, text=True, check=True).stdout
    return dict(kv.split("=") for kv in out.split())


def torch_part(threads, epochs):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers = []
    for i in range(len(DIMS) - 1):
        layers.append(torch.nn.Linear(DIMS[i], DIMS[i + 1]))
        if i < len(DIMS) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = torch.nn.CrossEntropyLoss()
    x = torch.randn(ROWS, DIMS[0])
    y = torch.randint(0, DIMS[-1], (ROWS,))
    best = 1e30
    for _ in range(2):
        t0 = time.time()
        for _ in range(epochs):
            perm = torch.randperm(ROWS)
            for r in range(0, ROWS, BATCH):
                idx = perm[r:r + BATCH]
                opt.zero_grad()
                crit(model(x[idx]), y[idx]).backward()
                opt.step()
        best = min(best, time.time() - t0)
    return best


def latency_part(build, epochs, nice):
    import qn_harness
    from qn_harness import Client, Worker, make_repo, quern_model, tensor
    qn_harness.WORKER = os.path.join(build, "quern-worker")
    small = quern_model.random_mlp([256, 64, 16], ["relu", "none"], 1)
    repo = make_repo({"small": {1: small}})
    x1 = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    res = {}
    with Worker(repo, "--train-nice", str(nice)) as w:
        c = Client(w.endpoint, timeout_ms=120000)

        def sample(n, stop=None):
            lat = []
            for i in range(n):
                if stop is not None and stop.is_set():
                    break
                t0 = time.perf_counter()
                r = c.call({"v": 1, "id": i, "type": "predict", "model": "small", "inputs": tensor(x1),
                            "cache": False})
                lat.append(time.perf_counter() - t0)
                assert r["status"] == "ok", r
                time.sleep(0.002)
            return np.array(lat) * 1e6

        sample(200)
        idle = sample(2000)
        rng = np.random.default_rng(1)
        xt = rng.standard_normal((ROWS, DIMS[0])).astype(np.float32)
        yt = rng.integers(0, DIMS[-1], size=(ROWS, 1)).astype(np.float32)
        init = {"input_dim": DIMS[0], "seed": 1,
                "layers": [{"units": d, "activation": "relu"} for d in DIMS[1:-1]] +
                          [{"units": DIMS[-1], "activation": "softmax"}]}
        tc = Client(w.endpoint, timeout_ms=600000)
        tc.send({"v": 1, "id": "bench-train", "type": "train", "model": "big", "init": init, "x": tensor(xt),
                 "y": tensor(yt), "loss": "cross_entropy", "optimizer": {"name": "adam", "lr": 1e-3},
                 "epochs": epochs, "batch_size": BATCH})
        done = threading.Event()
        final = {}

        def wait_final():
            while True:
                r = tc.recv()
                if r["type"] == "result":
                    final.update(r)
                    done.set()
                    return

        th = threading.Thread(target=wait_final, daemon=True)
        th.start()
        time.sleep(0.3)
        busy = sample(100000, done)
        th.join()
        assert final.get("status") == "ok", final
        m = re.search(r"'big' version \d+ written: .* in ([0-9.]+) s", w.log())
        res["train_s_in_worker"] = float(m.group(1)) if m else float("nan")
        c.close()
        tc.close()
        w.stop()
    res["idle"] = idle
    res["busy"] = busy
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(SRC, "build"))
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--skip-latency", action="store_true")
    a = ap.parse_args()
    gf = flops(a.epochs) / 1e9
    print("model %s relu, Adam, batch %d, %d epochs over %d rows: %.1f GFLOP of training arithmetic"
          % ("->".join(map(str, DIMS)), BATCH, a.epochs, ROWS, gf), flush=True)
    q = quern_part(a.build, a.epochs)
    print("quern (1 thread):   %6.2f s  %6.1f GFLOP/s; its sgemm calls alone %6.2f s %6.1f GFLOP/s: the step "
          "reaches %.0f%% of the GEMM rate" % (float(q["train_s"]), float(q["train_gflops"]), float(q["gemm_s"]),
                                               float(q["gemm_gflops"]), 100 * float(q["fraction"])), flush=True)
    t = torch_part(a.torch_threads, a.epochs)
    print("torch 1.13 (%d thr): %6.2f s  %6.1f GFLOP/s   -> quern/torch speed %.2fx"
          % (a.torch_threads, t, gf / t, t / float(q["train_s"])), flush=True)
    if a.skip_latency:
        return
    for nice in (10, 0):
        r = latency_part(a.build, a.epochs, nice)
        i, b = r["idle"], r["busy"]
        print("predict 1 row (256->64->16), train-nice %2d: idle p50 %6.0f us p99 %6.0f us (n=%d); during "
              "training p50 %6.0f us p99 %6.0f us (n=%d); the job trained in %.2f s in the worker"
              % (nice, np.percentile(i, 50), np.percentile(i, 99), len(i), np.percentile(b, 50),
                 np.percentile(b, 99), len(b), r["train_s_in_worker"]), flush=True)


if __name__ == "__main__":
    main()
