#!/usr/bin/python3
"""quern_model.py: write, read and run quern model files from numpy.

The test-side twin of lib/safetensors.c and lib/model.c: it writes
safetensors files (the format of huggingface/safetensors, without needing
that package or torch), builds MLPs in the "quern.mlp.v1" format of
CONTRACT.md section 2 and the "quern.mlp.c1" compressed extension of
schemas/model.md, and computes a numpy reference forward pass with torch's
activation definitions (GELU in its exact erf form, stable softmax). It must
stay independent of the C code it is used to check: nothing here calls quern.

Import it (sys.path.insert(0, "tests/tools")) or run it:

    quern_model.py mlp OUT --dims 64,128,10 --acts relu,none --seed 1
    quern_model.py mlp OUT --dims 64,32 --acts gelu --repr int8
    quern_model.py forward MODEL IN.npy OUT.npy
    quern_model.py selftest
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

FORMAT_V1 = "quern.mlp.v1"
FORMAT_C1 = "quern.mlp.c1"
ACTIVATIONS = ("none", "relu", "gelu", "sigmoid", "tanh", "softmax")
REPRS = ("f32", "f16", "int8", "csr_f32", "csr_int8")

_DTYPES = {
    np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8", np.dtype("int32"): "I32", np.dtype("int64"): "I64",
    np.dtype("float64"): "F64",
}
_NP_DTYPES = {v: k for k, v in _DTYPES.items()}


# ---- safetensors

def write_safetensors(path, tensors, metadata=None):
    """Writes tensors (dict name -> np.ndarray, in insertion order) and
    metadata (dict str -> str) as a safetensors file. The header is padded
    with spaces to a multiple of 8 bytes, as the reference writer does; the
    file is written to path.tmp and renamed, so a watcher never sees half."""
    header = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata keys and values must be str")
        header["__metadata__"] = dict(metadata)
    blobs, off = [], 0
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        dt = arr.dtype.newbyteorder("=") if arr.dtype.byteorder not in "=|" else arr.dtype
        if dt not in _DTYPES:
            raise TypeError("%s: unsupported dtype %s" % (name, arr.dtype))
        data = np.ascontiguousarray(arr, dtype=dt.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _DTYPES[dt], "shape": list(arr.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_safetensors(path):
    """Returns (tensors: dict name -> np.ndarray, metadata: dict). Checks
    offsets against the file the way lib/safetensors.c does."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError("shorter than 8 bytes")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > len(buf) - 8:
        raise ValueError("header runs past the end of the file")
    header = json.loads(buf[8:8 + n])
    data = buf[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    tensors, spans = {}, []
    for name, ent in header.items():
        dt = _NP_DTYPES[ent["dtype"]].newbyteorder("<")
        b, e = ent["data_offsets"]
        count = int(np.prod(ent["shape"], dtype=np.int64))
        if not 0 <= b <= e <= len(data) or e - b != count * dt.itemsize:
            raise ValueError("%s: bad data_offsets" % name)
        tensors[name] = np.frombuffer(data[b:e], dtype=dt).reshape(ent["shape"]).astype(dt.newbyteorder("="))
        spans.append((b, e))
    pos = 0
    for b, e in sorted(spans):
        if b != pos:
            raise ValueError("tensors overlap or leave a gap")
        pos = e
    if pos != len(data):
        raise ValueError("tensors do not cover the data")
    return tensors, meta


# ---- MLPs

def random_mlp(dims, acts, seed=0, bias=True):
    """Layers [(W [out, in] f32, b [out] f32 or None, activation)] for widths
    dims (dims[0] inputs, dims[-1] outputs), initialised as torch.nn.Linear
    (uniform in +-1/sqrt(in)), deterministic in seed."""
    dims = [int(d) for d in dims]
    if len(acts) != len(dims) - 1:
        raise ValueError("need one activation per layer: %d dims, %d acts" % (len(dims), len(acts)))
    rng = np.random.default_rng(seed)
    layers = []
    for i, act in enumerate(acts):
        if act not in ACTIVATIONS:
            raise ValueError("unknown activation %r" % act)
        k = 1.0 / math.sqrt(dims[i])
        w = rng.uniform(-k, k, size=(dims[i + 1], dims[i])).astype(np.float32)
        b = rng.uniform(-k, k, size=(dims[i + 1],)).astype(np.float32) if bias else None
        layers.append((w, b, act))
    return layers


def compress_weight(w, repr_, prune=0.0):
    """A weight [out, in] f32 in representation repr_: returns a dict of the
    layer's tensor roles ("weight", "scale", "indptr", "indices", "values").
    int8 is symmetric per output row (scale = max|w|/127, q = round(w/scale)).
    prune zeroes the smallest |w| fraction of each row (csr reprs only
    then store just the survivors)."""
    w = np.asarray(w, dtype=np.float32)
    if prune > 0:
        w = w.copy()
        k = int(round(prune * w.shape[1]))
        if k > 0:
            idx = np.argsort(np.abs(w), axis=1, kind="stable")[:, :k]
            np.put_along_axis(w, idx, 0.0, axis=1)
    if repr_ == "f32":
        return {"weight": w}
    if repr_ == "f16":
        return {"weight": w.astype(np.float16)}
    scale = None
    if repr_ in ("int8", "csr_int8"):
        amax = np.abs(w).max(axis=1)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    if repr_ == "int8":
        q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
        return {"weight": q, "scale": scale}
    if repr_ in ("csr_f32", "csr_int8"):
        rows, cols = np.nonzero(w)
        indptr = np.zeros(w.shape[0] + 1, dtype=np.int32)
        np.add.at(indptr, rows + 1, 1)
        indptr = np.cumsum(indptr, dtype=np.int32)
        vals = w[rows, cols]
        out = {"indptr": indptr, "indices": cols.astype(np.int32)}
        if repr_ == "csr_f32":
            out["values"] = vals.astype(np.float32)
        else:
            out["values"] = np.clip(np.rint(vals / scale[rows]), -127, 127).astype(np.int8)
            out["scale"] = scale
        return out
    raise ValueError("unknown repr %r" % repr_)


def write_mlp(path, weights, reprs=None, prune=0.0):
    """Writes layers [(W [out, in], b or None, activation)] as a model file.
    Without reprs (or all "f32" and no pruning) it is a plain "quern.mlp.v1"
    file, tensors named layers.<i>.weight / .bias; with reprs (one per layer)
    a "quern.mlp.c1" file. Returns the layers as they will compute (weights
    after quantisation and pruning, dequantised to f32), for forward()."""
    compressed = reprs is not None and (any(r != "f32" for r in reprs) or prune > 0)
    reprs = reprs or ["f32"] * len(weights)
    tensors, objs, effective = {}, [], []
    for i, ((w, b, act), rp) in enumerate(zip(weights, reprs)):
        w = np.asarray(w, dtype=np.float32)
        if act not in ACTIVATIONS:
            raise ValueError("unknown activation %r" % act)
        p = "layers.%d." % i
        obj = {"type": "dense"}
        parts = compress_weight(w, rp, prune)
        for role, arr in parts.items():
            tensors[p + role] = arr
            obj[role] = p + role
        if b is not None:
            tensors[p + "bias"] = np.asarray(b, dtype=np.float32)
        obj["bias"] = p + "bias" if b is not None else None
        obj["activation"] = act
        if compressed:
            obj["repr"] = rp
            obj["in"], obj["out"] = int(w.shape[1]), int(w.shape[0])
        objs.append(obj)
        effective.append((dense_weight(parts, rp, w.shape), None if b is None else np.asarray(b, np.float32), act))
    meta = {"format": FORMAT_C1 if compressed else FORMAT_V1,
            "layers": json.dumps(objs, separators=(",", ":"))}
    write_safetensors(path, tensors, meta)
    return effective


def dense_weight(parts, repr_, shape):
    """The f32 [out, in] matrix a layer's stored tensors stand for."""
    out, inp = shape
    if repr_ in ("f32", "f16"):
        return parts["weight"].astype(np.float32)
    if repr_ == "int8":
        return parts["weight"].astype(np.float32) * parts["scale"][:, None]
    w = np.zeros((out, inp), dtype=np.float32)
    rows = np.repeat(np.arange(out), np.diff(parts["indptr"]))
    vals = parts["values"].astype(np.float32)
    if repr_ == "csr_int8":
        vals = vals * parts["scale"][rows]
    w[rows, parts["indices"]] = vals
    return w


def load_mlp(path):
    """Reads a model file (either format) into layers [(W f32 [out, in],
    b or None, activation)] with compressed weights expanded, for forward()."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") not in (FORMAT_V1, FORMAT_C1):
        raise ValueError("not a quern model: format %r" % meta.get("format"))
    layers = []
    for obj in json.loads(meta["layers"]):
        rp = obj.get("repr", "f32")
        roles = {r: tensors[obj[r]] for r in ("weight", "scale", "indptr", "indices", "values") if obj.get(r)}
        shape = (obj["out"], obj["in"]) if rp.startswith("csr") else roles["weight"].shape
        b = tensors[obj["bias"]] if obj.get("bias") else None
        layers.append((dense_weight(roles, rp, shape), b, obj["activation"]))
    return layers


# ---- reference forward

_erf = np.frompyfunc(math.erf, 1, 1)


def activate(x, act):
    """torch's definitions, in float64."""
    x = np.asarray(x, dtype=np.float64)
    if act == "none":
        return x
    if act == "relu":
        return np.maximum(x, 0.0)
    if act == "gelu":  # torch.nn.GELU(approximate="none")
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))
    if act == "sigmoid":
        e = np.exp(-np.abs(x))  # never overflows
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    if act == "tanh":
        return np.tanh(x)
    if act == "softmax":  # over each row, max subtracted
        z = np.exp(x - x.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)
    raise ValueError("unknown activation %r" % act)


def forward(layers, x):
    """y = act(x @ W.T + b) through every layer, in float64 (a reference, not
    a speed test). x [rows, in]; returns float64 [rows, out]."""
    h = np.atleast_2d(np.asarray(x, dtype=np.float64))
    for w, b, act in layers:
        h = h @ np.asarray(w, dtype=np.float64).T
        if b is not None:
            h = h + np.asarray(b, dtype=np.float64)
        h = activate(h, act)
    return h


# ---- self test

def selftest():
    import tempfile
    d = tempfile.mkdtemp(prefix="quern_model.")
    p = os.path.join(d, "m.safetensors")
    layers = random_mlp([5, 7, 3], ["gelu", "softmax"], seed=3)
    write_mlp(p, layers)
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
    assert n % 8 == 0
    back = load_mlp(p)
    for (w0, b0, a0), (w1, b1, a1) in zip(layers, back):
        assert np.array_equal(w0, w1) and np.array_equal(b0, b1) and a0 == a1
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    y = forward(back, x)
    assert y.shape == (4, 3) and np.allclose(y.sum(axis=1), 1.0)
    # activations against their scalar definitions
    for v in (-30.0, -2.5, -1e-3, 0.0, 0.7, 4.0, 30.0):
        assert abs(activate([[v]], "gelu")[0, 0] - v * 0.5 * (1 + math.erf(v / math.sqrt(2)))) < 1e-15
        assert abs(activate([[v]], "sigmoid")[0, 0] - 1 / (1 + math.exp(-v))) < 1e-15
    assert np.all(np.isfinite(activate([[1000.0, -1000.0, 0.0]], "softmax")))
    # every repr round-trips through the file and stays close to f32
    wide = random_mlp([64, 32, 8], ["relu", "none"], seed=4)
    ref = forward(wide, x.repeat(16, axis=1)[:, :64])
    for rp in REPRS:
        eff = write_mlp(p, wide, reprs=[rp, rp])
        got = forward(load_mlp(p), x.repeat(16, axis=1)[:, :64])
        assert np.allclose(got, forward(eff, x.repeat(16, axis=1)[:, :64]), atol=1e-6), rp
        assert np.abs(got - ref).max() < 0.05, rp
    eff = write_mlp(p, wide, reprs=["csr_f32", "csr_f32"], prune=0.5)
    assert sum(int(np.count_nonzero(w)) for w, _, _ in eff) <= (64 * 32 + 32 * 8) // 2
    print("quern_model selftest ok")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mlp", help="write a random MLP")
    m.add_argument("out")
    m.add_argument("--dims", required=True, help="widths, e.g. 64,128,10")
    m.add_argument("--acts", required=True, help="one activation per layer, e.g. relu,none")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--no-bias", action="store_true")
    m.add_argument("--repr", default=None, help="one repr for every layer, or one per layer (c1 format)")
    m.add_argument("--prune", type=float, default=0.0, help="zero this fraction of each row")
    f = sub.add_parser("forward", help="run a model file on a .npy input")
    f.add_argument("model")
    f.add_argument("input")
    f.add_argument("output")
    sub.add_parser("selftest")
    a = ap.parse_args(argv)
    if a.cmd == "mlp":
        dims = [int(v) for v in a.dims.split(",")]
        acts = a.acts.split(",")
        layers = random_mlp(dims, acts, a.seed, bias=not a.no_bias)
        reprs = None
        if a.repr:
            reprs = a.repr.split(",")
            if len(reprs) == 1:
                reprs = reprs * len(layers)
        write_mlp(a.out, layers, reprs=reprs, prune=a.prune)
    elif a.cmd == "forward":
        y = forward(load_mlp(a.model), np.load(a.input)).astype(np.float32)
        np.save(a.output, y)
    else:
        selftest()
    return 0


if __name__ == "__main__":
    sys.exit(main())
