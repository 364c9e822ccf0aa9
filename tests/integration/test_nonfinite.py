"""NaN and +-Inf go through every activation, every weight representation and
every kernel path as torch would carry them (issue 9 item 3: ReLU used to turn
NaN into 0, so a NaN row came back as a plausible softmax).

For each activation (relu, gelu, sigmoid, tanh, softmax, none) and each
representation (f32; f16; int8 with its dynamic per-row activation
quantization; CSR f32 at two densities, so that both the sparse kernels and
the densified dense path run; CSR int8), a 256 -> 1024 -> 24 model is served
by a real quern-worker and fed jobs of 1, 3, 9, 20, 70 and 130 rows in which
some rows hold a NaN, a +Inf, a -Inf, several of them, or none. The reference
is torch (float32, torch.nn.functional.linear and torch's activations) on the
weights the file stands for (dequantized / densified): per element, quern's
NaN, +Inf and -Inf must be exactly torch's, and every finite element must be
finite in both and close (rows without NaN/Inf stay finite and correct).

The worker runs once per kernel path (QN_KERNEL: avx512vnni, avxvnni, avx2,
portable, those this CPU has), each with an f32 GEMM path (QN_SGEMM: the
packed AVX-512 / AVX2 kernels or OpenBLAS). One-row jobs on an idle worker
take the direct path with the intra-op split (256 x 1024 is just big
enough); the others go through the executors. 256 x 1024 f32 weights are
1 MiB, so OpenBLAS's per-row sgemv runs up to 4 rows, sgemm above."""
import os
import subprocess

import numpy as np
import torch

from qn_harness import BUILD, Client, Runner, Worker, make_repo, outputs, predict_job, quern_model

torch.set_num_threads(1)
ACTS = ("relu", "gelu", "sigmoid", "tanh", "softmax", "none")
# name: (repr for both layers, prune fraction, relative tolerance on finite values)
REPS = {
    "f32": ("f32", 0.0, 1e-4),
    "f16": ("f16", 0.0, 1e-4),
    "int8": ("int8", 0.0, 3e-2),
    "csr90": ("csr_f32", 0.9, 1e-4),   # density 0.1: the sparse kernels at every batch size
    "csr30": ("csr_f32", 0.3, 1e-4),   # density 0.7: densified at 1 and >= 8 rows, sparse at 2-7
    "csr8": ("csr_int8", 0.5, 1e-4),   # density 0.5: sparse up to 15 rows, densified above
}
ROWS = (1, 3, 9, 20, 70, 130)
DIMS = [256, 1024, 24]


def kernel_paths():
    """(QN_KERNEL, QN_SGEMM) pairs this CPU can run, from the kernels'
    own support check (quern inspect would need a model; the unit test
    binary prints it, but /proc/cpuinfo is enough)."""
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    out = []
    if {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags:
        out.append(("avx512vnni", "avx512"))
    if {"avx2", "fma", "f16c", "avx_vnni"} <= flags:
        out.append(("avxvnni", "avx2"))
    if {"avx2", "fma", "f16c"} <= flags:
        out.append(("avx2", "blas"))
    out.append(("portable", "blas"))
    return out


def torch_forward(layers, x):
    h = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    for w, b, act in layers:
        h = torch.nn.functional.linear(h, torch.from_numpy(w), None if b is None else torch.from_numpy(b))
        if act == "relu":
            h = torch.relu(h)
        elif act == "gelu":
            h = torch.nn.functional.gelu(h)
        elif act == "sigmoid":
            h = torch.sigmoid(h)
        elif act == "tanh":
            h = torch.tanh(h)
        elif act == "softmax":
            h = torch.softmax(h, dim=-1)
    return h.numpy()


def inputs(rng, rows, kind=None):
    """rows x 256 inputs; row r gets the non-finite pattern kind (or, for
    None, pattern r % 6): 0 finite, 1 one NaN, 2 one +Inf, 3 one -Inf,
    4 +Inf and -Inf, 5 three +Inf and a NaN."""
    x = rng.standard_normal((rows, DIMS[0])).astype(np.float32)
    for r in range(rows):
        k = kind if kind is not None else r % 6
        cols = rng.choice(DIMS[0], size=4, replace=False)
        if k == 1:
            x[r, cols[0]] = np.nan
        elif k == 2:
            x[r, cols[0]] = np.inf
        elif k == 3:
            x[r, cols[0]] = -np.inf
        elif k == 4:
            x[r, cols[0]], x[r, cols[1]] = np.inf, -np.inf
        elif k == 5:
            x[r, cols[:3]] = np.inf
            x[r, cols[3]] = np.nan
    return x


def compare(name, rows, x, got, want, tol):
    """Per element NaN / +Inf / -Inf equal, finite close. Returns a list of
    problems (empty: fine)."""
    bad = []
    for r in range(rows):
        g, w = got[r], want[r]
        for what, f in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
            if not np.array_equal(f(g), f(w)):
                bad.append("%s rows=%d row %d (input %s): %s at %d outputs, torch %d" % (
                    name, rows, r, "finite" if np.isfinite(x[r]).all() else "with NaN/Inf",
                    what, int(f(g).sum()), int(f(w).sum())))
        fin = np.isfinite(w)
        if fin.any():
            scale = max(1.0, float(np.abs(w[fin]).max()))
            err = float(np.abs(g[fin] - w[fin]).max()) / scale if np.isfinite(g[fin]).all() else np.inf
            if not err <= tol:
                bad.append("%s rows=%d row %d: finite outputs off by %.3g (tol %.1g)" % (name, rows, r, err, tol))
    return bad


def check_worker(ep, models, seed):
    c = Client(ep)
    rng = np.random.default_rng(seed)
    problems = []
    jid = 0
    for name, (layers, tol) in models.items():
        # one-row jobs of every pattern (the direct path), then batches
        jobs = [inputs(rng, 1, kind) for kind in range(6)] + [inputs(rng, n) for n in ROWS[1:]]
        for x in jobs:
            jid += 1
            res = c.call(predict_job(jid, name, x))
            assert res["status"] == "ok", (name, res)
            problems += compare(name, x.shape[0], x, outputs(res), torch_forward(layers, x), tol)
    c.close()
    if problems:
        per = {}
        for pr in problems:
            per[pr.split()[0]] = per.get(pr.split()[0], 0) + 1
        raise AssertionError("%d mismatches against torch, by model: %s\nfirst ones:\n%s" % (
            len(problems), ", ".join("%s %d" % kv for kv in sorted(per.items())), "\n".join(problems[:12])))


def build_repo():
    repo = make_repo({})
    models = {}
    for ai, act in enumerate(ACTS):
        base = quern_model.random_mlp(DIMS, [act, act], seed=11 + ai)
        for rname, (rp, prune, tol) in REPS.items():
            name = "%s_%s" % (rname, act)
            d = os.path.join(repo, name, "1")
            os.makedirs(d)
            eff = quern_model.write_mlp(os.path.join(d, "model.safetensors"), base,
                                        reprs=None if rp == "f32" else [rp, rp], prune=prune)
            models[name] = (eff, tol)
    return repo, models


def test_torch_reference_itself():
    """The reference's own behaviour that the checks rely on (torch's, not
    ours): relu and gelu keep NaN, gelu(-Inf) is NaN, Inf * 0 weights are
    NaN, a softmax row with NaN or +Inf is all NaN."""
    t = torch.tensor([np.nan, np.inf, -np.inf, 1.0])
    assert torch.isnan(torch.relu(t)[0]) and torch.isnan(torch.nn.functional.gelu(t)[2])
    y = torch.nn.functional.linear(torch.tensor([[np.inf, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
    assert torch.isnan(y[0, 0]) and torch.isposinf(y[0, 1])
    assert torch.isnan(torch.softmax(torch.tensor([1.0, np.inf]), 0)).all()


if __name__ == "__main__":
    r = Runner()
    r.run(test_torch_reference_itself)
    repo, models = build_repo()
    for i, (kpath, sgemm) in enumerate(kernel_paths()):
        env = {"QN_KERNEL": kpath, "QN_SGEMM": sgemm}
        with Worker(repo, env=env) as w:
            def check(ep=w.endpoint, seed=i):
                check_worker(ep, models, seed)
            check.__name__ = "nonfinite_%s_%s" % (kpath, sgemm)
            r.run(check)
            assert "not runnable" not in w.log(), w.log()
            assert w.stop() == 0
    r.done()
