"""Train jobs through a real worker (ZeroMQ DEALER) against torch.optim 1.13
(python3-torch from Debian): for every optimizer and schedule, the weights of
the version quern writes equal torch's after the same steps from the same
start and data, to 1e-5 relative to the weights' scale. Also: continuation
(two jobs of k epochs == one of 2k), redelivery (one version), progress
messages, bad input (clear errors, nothing written), divergence."""
import math
import os
import sys

import msgpack  # noqa: F401
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qn_harness import Client, Runner, Worker, make_repo, quern_model, tensor  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

IN, HID, OUT, ROWS, BS = 8, 16, 4, 32, 8
TOL = 1e-5


def start_layers(hidden_act, last_act, seed=1):
    return quern_model.random_mlp([IN, HID, OUT], [hidden_act, last_act], seed=seed)


ACT = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
       "none": torch.nn.Identity}


def torch_model(layers, loss):
    mods = []
    for i, (w, b, act) in enumerate(layers):
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        mods.append(lin)
        last = i == len(layers) - 1
        if act == "softmax":
            if not (last and loss == "cross_entropy"):
                mods.append(torch.nn.Softmax(dim=1))
        else:
            mods.append(ACT[act]())
    return torch.nn.Sequential(*mods)


def torch_opt(params, o):
    o = dict(o)
    name = o.pop("name")
    if name == "sgd":
        return torch.optim.SGD(params, **o)
    if name == "adam":
        b1, b2 = o.pop("beta1", 0.9), o.pop("beta2", 0.999)
        return torch.optim.Adam(params, betas=(b1, b2), **o)
    return torch.optim.RMSprop(params, **o)


def torch_train(layers, x, y, loss, opt, sched, epochs, xv=None, yv=None):
    """What the contract says a train job does, written with torch."""
    model = torch_model(layers, loss)
    o = torch_opt(model.parameters(), opt)
    base_lr = opt["lr"]
    s = None
    name = (sched or {}).get("name", "constant")
    if name == "step":
        s = torch.optim.lr_scheduler.StepLR(o, sched["step_size"], sched.get("gamma", 0.1))
    elif name == "cosine":
        s = torch.optim.lr_scheduler.CosineAnnealingLR(o, sched["t_max"], sched.get("eta_min", 0))
    elif name == "plateau":
        s = torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode="min", factor=sched.get("factor", 0.1),
                                                       patience=sched.get("patience", 10),
                                                       threshold=sched.get("threshold", 1e-4),
                                                       min_lr=sched.get("min_lr", 0))
    if loss == "mse":
        crit = torch.nn.MSELoss()
        yt = torch.from_numpy(y)
    else:
        crit = torch.nn.CrossEntropyLoss()
        yt = torch.from_numpy(y[:, 0].astype(np.int64)) if y.shape[1] == 1 else torch.from_numpy(y)
    xt = torch.from_numpy(x)
    step = 0
    for _ in range(epochs):
        tot = 0.0
        for r in range(0, len(x), BS):
            if name == "exponential":
                p = step / sched["decay_steps"]
                if sched.get("staircase"):
                    p = math.floor(p)
                for g in o.param_groups:
                    g["lr"] = base_lr * sched["decay_rate"] ** p
            o.zero_grad()
            lv = crit(model(xt[r:r + BS]), yt[r:r + BS])
            lv.backward()
            o.step()
            tot += lv.item() * len(xt[r:r + BS])
            step += 1
        metric = tot / len(x)
        if xv is not None:
            with torch.no_grad():
                yvt = torch.from_numpy(yv[:, 0].astype(np.int64)) if loss != "mse" and yv.shape[1] == 1 \
                    else torch.from_numpy(yv)
                metric = crit(model(torch.from_numpy(xv)), yvt).item()
        if name in ("step", "cosine"):
            s.step()
        elif name == "plateau":
            s.step(metric)
    return [m.weight.detach().numpy().copy() for m in model if isinstance(m, torch.nn.Linear)], \
           [m.bias.detach().numpy().copy() for m in model if isinstance(m, torch.nn.Linear)]


def data(loss, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ROWS, IN)).astype(np.float32)
    if loss == "mse":
        y = rng.standard_normal((ROWS, OUT)).astype(np.float32)
    elif loss == "ce_index":
        y = rng.integers(0, OUT, size=(ROWS, 1)).astype(np.float32)
    else:
        p = rng.uniform(0.1, 1.0, size=(ROWS, OUT)).astype(np.float32)
        y = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    return x, y


def version_layers(repo, name, v):
    return quern_model.load_mlp(os.path.join(repo, name, str(v), "model.safetensors"))


def versions(repo, name):
    return sorted(int(d) for d in os.listdir(os.path.join(repo, name)) if d.isdigit())


def train_job(jid, model, x, y, loss, opt, epochs=3, **kw):
    job = {"v": 1, "id": jid, "type": "train", "model": model, "x": tensor(x), "y": tensor(y), "loss": loss,
           "optimizer": opt, "epochs": epochs, "batch_size": BS, "shuffle": False}
    job.update(kw)
    return job


def run_job(c, job, timeout_msgs=10000):
    """Sends job; returns (progress messages, final result)."""
    c.send(job)
    prog = []
    for _ in range(timeout_msgs):
        r = c.recv()
        assert r["id"] == job["id"], r
        if r["type"] == "progress":
            prog.append(r)
            continue
        return prog, r
    raise AssertionError("no final result")


CASES = [
    # (hidden act, last act, loss, optimizer, schedule)
    ("relu", "none", "mse", {"name": "sgd", "lr": 0.1}, None),
    ("tanh", "none", "mse", {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}, None),
    ("gelu", "softmax", "ce_index", {"name": "sgd", "lr": 0.1, "momentum": 0.8, "dampening": 0.1}, None),
    ("relu", "softmax", "ce_index", {"name": "adam", "lr": 1e-2}, None),
    ("sigmoid", "none", "ce_prob", {"name": "adam", "lr": 5e-3, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
                                    "weight_decay": 1e-2}, None),
    ("tanh", "none", "mse", {"name": "rmsprop", "lr": 1e-3}, None),
    ("gelu", "sigmoid", "mse", {"name": "rmsprop", "lr": 2e-3, "alpha": 0.9, "momentum": 0.5, "centered": True,
                                "weight_decay": 1e-3}, None),
    ("relu", "softmax", "ce_index", {"name": "adam", "lr": 1e-2},
     {"name": "exponential", "decay_steps": 3, "decay_rate": 0.5, "staircase": False}),
    ("relu", "none", "mse", {"name": "sgd", "lr": 0.1, "momentum": 0.9},
     {"name": "exponential", "decay_steps": 4, "decay_rate": 0.3, "staircase": True}),
    ("tanh", "softmax", "ce_index", {"name": "adam", "lr": 1e-2}, {"name": "step", "step_size": 2, "gamma": 0.5}),
    ("relu", "none", "mse", {"name": "rmsprop", "lr": 1e-3, "momentum": 0.9},
     {"name": "cosine", "t_max": 2, "eta_min": 1e-4}),
    ("relu", "softmax", "ce_index", {"name": "sgd", "lr": 0.5},
     {"name": "plateau", "factor": 0.5, "patience": 0, "threshold": 0.05}),
]


def test_weights_equal_torch(w, c, repo):
    worst = 0.0
    for i, (ha, la, loss, opt, sched) in enumerate(CASES):
        start = start_layers(ha, la)
        x, y = data(loss, seed=i)
        lname = "mse" if loss == "mse" else "cross_entropy"
        epochs = 4
        kw = {}
        xv = yv = None
        if sched:
            kw["schedule"] = sched
        if sched and sched["name"] == "plateau":
            xv, yv = data(loss, seed=100 + i)
            kw.update(x_val=tensor(xv), y_val=tensor(yv))
        name = "t%d" % i
        os.makedirs(os.path.join(repo, name, "1"))
        quern_model.write_mlp(os.path.join(repo, name, "1", "model.safetensors"), start)
        prog, r = run_job(c, train_job("case%d" % i, name, x, y, lname, opt, epochs=epochs, version=1, **kw))
        assert r["status"] == "ok", (i, r)
        assert r["version"] == 2, r
        assert "loss" in r["metrics"], r
        got = version_layers(repo, name, 2)
        tw, tb = torch_train(start, x, y, lname, opt, sched, epochs, xv, yv)
        for (gw, gb, _), ew, eb, (sw, _, _) in zip(got, tw, tb, start):
            scale = max(np.abs(ew).max(), np.abs(eb).max())
            err = max(np.abs(gw - ew).max(), np.abs(gb - eb).max()) / scale
            moved = np.abs(ew - sw).max()
            assert err <= TOL, "case %d (%s %s %s %s): relative error %.3g" % (i, ha, loss, opt, sched, err)
            assert moved > 1e-4, "case %d: the weights hardly moved; the test would prove nothing" % i
            worst = max(worst, err)
    print("   worst relative weight error over %d cases: %.3g" % (len(CASES), worst))


def test_continuation_equals_one_long_job(w, c, repo):
    start = start_layers("relu", "softmax")
    name = "cont"
    os.makedirs(os.path.join(repo, name, "1"))
    quern_model.write_mlp(os.path.join(repo, name, "1", "model.safetensors"), start)
    x, y = data("ce_index", seed=7)
    opt = {"name": "adam", "lr": 1e-2}
    sched = {"name": "step", "step_size": 3, "gamma": 0.5}
    kw = dict(shuffle=True, seed=42, schedule=sched)
    _, a = run_job(c, train_job("c-a", name, x, y, "cross_entropy", opt, epochs=3, version=1, **kw))
    _, b = run_job(c, train_job("c-b", name, x, y, "cross_entropy", opt, epochs=3, version=a["version"], **kw))
    _, l = run_job(c, train_job("c-long", name, x, y, "cross_entropy", opt, epochs=6, version=1, **kw))
    assert a["status"] == b["status"] == l["status"] == "ok", (a, b, l)
    two = version_layers(repo, name, b["version"])
    one = version_layers(repo, name, l["version"])
    for (w2, b2, _), (w1, b1, _) in zip(two, one):
        assert np.array_equal(w2, w1) and np.array_equal(b2, b1), \
            "2 x 3 epochs differ from 6 epochs by %g" % np.abs(w2 - w1).max()
    # and the shuffle mattered: not the same as unshuffled
    _, u = run_job(c, train_job("c-u", name, x, y, "cross_entropy", opt, epochs=6, version=1, schedule=sched))
    assert not np.array_equal(version_layers(repo, name, u["version"])[0][0], one[0][0])


def test_redelivery_one_version(w, c, repo):
    x, y = data("mse", seed=3)
    init = {"input_dim": IN, "layers": [{"units": 8, "activation": "relu"}, {"units": OUT, "activation": "none"}],
            "seed": 5}
    job = train_job("redeliver-1", "fresh", x, y, "mse", {"name": "sgd", "lr": 0.05}, epochs=2, init=init)
    _, r1 = run_job(c, job)
    assert r1["status"] == "ok" and r1["version"] == 1, r1
    _, r2 = run_job(c, job)
    assert r2["status"] == "ok" and r2["version"] == 1 and r2.get("repeated") is True, r2
    assert versions(repo, "fresh") == [1]
    assert r2["metrics"]["loss"] == r1["metrics"]["loss"]
    # the new model serves at once
    p = c.call({"v": 1, "id": "p", "type": "predict", "model": "fresh", "inputs": tensor(x[:3])})
    assert p["status"] == "ok" and p["version"] == 1, p
    ref = quern_model.forward(version_layers(repo, "fresh", 1), x[:3])
    got = np.frombuffer(p["outputs"]["data"], dtype="<f4").reshape(p["outputs"]["shape"])
    assert np.allclose(got, ref, atol=1e-5)
    # no temp directories left behind
    assert not [d for d in os.listdir(os.path.join(repo, "fresh")) if d.startswith(".")]


def test_progress_messages(w, c, repo):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4096, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=(4096, 1)).astype(np.float32)
    init = {"input_dim": 64, "layers": [{"units": 256, "activation": "relu"}, {"units": 10, "activation": "softmax"}],
            "seed": 1}
    job = train_job("prog", "prog", x, y, "cross_entropy", {"name": "adam", "lr": 1e-3}, epochs=3, init=init,
                    x_val=tensor(x[:256]), y_val=tensor(y[:256]))
    job["batch_size"] = 32
    prog, r = run_job(c, job)
    assert r["status"] == "ok", r
    assert prog, "no progress messages"
    for p in prog:
        for k in ("epoch", "step", "loss", "lr", "status", "model"):
            assert k in p, (k, p)
    ends = [p for p in prog if "val_loss" in p]
    assert ends and ends[-1]["epoch"] == 3 and "val_accuracy" in ends[-1], prog[-3:]
    assert r["metrics"]["val_loss"] == ends[-1]["val_loss"]
    assert 0 <= r["metrics"]["accuracy"] <= 1


def test_bad_input(w, c, repo):
    x, y = data("ce_index", seed=2)
    start = start_layers("relu", "softmax")
    os.makedirs(os.path.join(repo, "bad", "1"))
    quern_model.write_mlp(os.path.join(repo, "bad", "1", "model.safetensors"), start)
    ok_opt = {"name": "adam", "lr": 1e-3}
    yb = y.copy()
    yb[3, 0] = OUT
    xn = x.copy()
    xn[1, 2] = np.nan
    cases = [
        ("shape", dict(x=tensor(x[:, :5])), "shape_mismatch"),
        ("rows", dict(y=tensor(y[:10])), "shape_mismatch"),
        ("class", dict(y=tensor(yb)), "bad_job"),
        ("nan", dict(x=tensor(xn)), "bad_job"),
        ("lr0", dict(optimizer={"name": "adam", "lr": 0}), "bad_job"),
        ("lrneg", dict(optimizer={"name": "sgd", "lr": -1}), "bad_job"),
        ("opt", dict(optimizer={"name": "lbfgs", "lr": 1}), "bad_job"),
        ("sched", dict(schedule={"name": "warmup"}), "bad_job"),
        ("bs0", dict(batch_size=0), "bad_job"),
        ("bsbig", dict(batch_size=ROWS + 1), "bad_job"),
        ("loss", dict(loss="hinge"), "bad_job"),
        ("nomodel", dict(model="nope"), "unknown_model"),
        ("nover", dict(version=9), "unknown_version"),
    ]
    for tag, kw, code in cases:
        job = train_job("bad-" + tag, "bad", x, y, "cross_entropy", ok_opt, epochs=1)
        job.update(kw)
        _, r = run_job(c, job)
        assert r["status"] == "error" and r["error"]["code"] == code, (tag, r)
        assert r["error"]["message"], r
    # divergence: huge lr on mse -> NaN; no version written
    xm, ym = data("mse", seed=2)
    start2 = start_layers("relu", "none")
    os.makedirs(os.path.join(repo, "div", "1"))
    quern_model.write_mlp(os.path.join(repo, "div", "1", "model.safetensors"), start2)
    _, r = run_job(c, train_job("div", "div", xm, ym * 1e3, "mse", {"name": "sgd", "lr": 1e6}, epochs=20))
    assert r["status"] == "error" and r["error"]["code"] == "diverged", r
    assert versions(repo, "bad") == [1] and versions(repo, "div") == [1]
    # and the worker still serves
    p = c.call({"v": 1, "id": "p2", "type": "predict", "model": "bad", "inputs": tensor(x[:2])})
    assert p["status"] == "ok", p


def test_train_queue_bound():
    """--train-queue 1: one job trains, one waits, the third is rejected at
    once (overloaded); predict jobs are still served meanwhile."""
    repo = make_repo({})
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2048, 128)).astype(np.float32)
    y = rng.standard_normal((2048, 4)).astype(np.float32)
    init = {"input_dim": 128, "layers": [{"units": 1024, "activation": "relu"}, {"units": 4, "activation": "none"}]}
    with Worker(repo, "--train-queue", "1") as w:
        c = Client(w.endpoint, timeout_ms=120000)
        for i in range(3):
            c.send(train_job("q%d" % i, "q", x, y, "mse", {"name": "sgd", "lr": 1e-3}, epochs=4, init=init))
        finals = {}
        while len(finals) < 3:
            r = c.recv()
            if r["type"] == "result":
                finals[r["id"]] = r
                if r["id"] == "q2":
                    # answered before the others finished; inference goes on meanwhile
                    p = c.call({"v": 1, "id": "pq", "type": "predict", "model": "q", "inputs": tensor(x[:1])}) \
                        if os.path.isdir(os.path.join(repo, "q", "1")) else None
                    assert p is None or p["status"] == "ok", p
        assert finals["q2"]["status"] == "rejected" and finals["q2"]["error"]["code"] == "overloaded", finals["q2"]
        assert finals["q0"]["status"] == "ok" and finals["q1"]["status"] == "ok", finals
        assert sorted([finals["q0"]["version"], finals["q1"]["version"]]) == [1, 2]
        c.close()
        assert w.stop() == 0


def main():
    repo = make_repo({})
    t = Runner()
    with Worker(repo) as w:
        c = Client(w.endpoint, timeout_ms=120000)
        t.run(test_weights_equal_torch, w, c, repo)
        t.run(test_continuation_equals_one_long_job, w, c, repo)
        t.run(test_redelivery_one_version, w, c, repo)
        t.run(test_progress_messages, w, c, repo)
        t.run(test_bad_input, w, c, repo)
        c.close()
        assert w.stop() == 0
    t.run(test_train_queue_bound)
    t.done()


if __name__ == "__main__":
    main()
