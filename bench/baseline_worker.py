#!/usr/bin/python3
"""baseline_worker.py: what a user would otherwise write by hand to serve a
quern model over ZeroMQ: pyzmq ROUTER + msgpack + numpy, with micro-batching.
It is the comparison point for quern-worker in the benchmarks, so it is meant
to be a fair, reasonably written baseline, not a strawman:

  * weights are transposed and made contiguous once at load time, so each
    layer is one BLAS sgemm (numpy's matmul) plus vectorised epilogue;
  * one blocking receive, then up to --max-batch more jobs drained without
    blocking, all stacked into one matrix and run as one forward pass;
  * replies carry a proper result (outputs as a bin f32 tensor) on the
    envelope each job came with, so REQ and DEALER clients both work.

Usage:
  /usr/bin/python3 bench/baseline_worker.py --bind tcp://127.0.0.1:5600 \
      --model REPO/name/1/model.safetensors [--name NAME] [--max-batch 64]

The served model name defaults to the repository layout's <name> directory
(REPO/<name>/<version>/model.safetensors), else the file's stem. Only the
quern.mlp.v1 base format (schemas/model.md) is understood.
"""
import argparse
import json
import os
import signal
import struct
import sys

import msgpack
import numpy as np
import zmq

ST_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16,
             "I32": np.int32, "I64": np.int64, "I8": np.int8, "U8": np.uint8}


def load_safetensors(path):
    """Returns (tensors dict name -> ndarray, metadata dict)."""
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + hlen
    tensors = {}
    for name, t in header.items():
        dt = np.dtype(ST_DTYPES[t["dtype"]]).newbyteorder("<")
        lo, hi = t["data_offsets"]
        arr = np.frombuffer(blob, dtype=dt, count=(hi - lo) // dt.itemsize, offset=base + lo)
        tensors[name] = arr.reshape(t["shape"])
    return tensors, meta


def _erf(x):
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and the
    # baseline may not pull in scipy. quern's GELU is the exact erf form.
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
               + 0.254829592) * t * np.exp(-a * a)
    return s * y


def _softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


ACTIVATIONS = {
    "none": lambda x: x,
    "relu": lambda x: np.maximum(x, 0, out=x),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "tanh": lambda x: np.tanh(x, out=x),
    "gelu": lambda x: (0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))).astype(np.float32),
    "softmax": _softmax,
}


class MLP:
    def __init__(self, path):
        tensors, meta = load_safetensors(path)
        if meta.get("format") != "quern.mlp.v1":
            raise ValueError(f"{path}: __metadata__.format is {meta.get('format')!r}, "
                             "not 'quern.mlp.v1'")
        self.layers = []
        for i, layer in enumerate(json.loads(meta["layers"])):
            if layer.get("type") != "dense":
                raise ValueError(f"{path}: layer {i} type {layer.get('type')!r} is not dense")
            w = tensors[layer["weight"]].astype(np.float32)
            wt = np.ascontiguousarray(w.T)  # [in, out]: x @ wt is one sgemm
            b = tensors[layer["bias"]].astype(np.float32) if layer.get("bias") else None
            act = layer.get("activation", "none")
            if act not in ACTIVATIONS:
                raise ValueError(f"{path}: layer {i} activation {act!r} unknown")
            self.layers.append((wt, b, ACTIVATIONS[act]))
        self.in_dim = self.layers[0][0].shape[0]
        self.out_dim = self.layers[-1][0].shape[1]

    def forward(self, x):
        for wt, b, act in self.layers:
            x = x @ wt
            if b is not None:
                x += b
            x = act(x)
        return x


def model_name_of(path):
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    if len(parts) >= 3 and parts[-2].isdigit():
        return parts[-3], int(parts[-2])
    return os.path.splitext(os.path.basename(path))[0], 1


def decode_inputs(t):
    """A tensor map {dtype, shape, data} or an array of arrays -> 2-D f32."""
    if isinstance(t, dict):
        if t.get("dtype") != "f32":
            raise ValueError("inputs dtype must be f32")
        shape = t.get("shape")
        data = t.get("data")
        if (not isinstance(shape, (list, tuple)) or len(shape) != 2 or
                not isinstance(data, (bytes, bytearray))):
            raise ValueError("inputs must have a 2-D shape and bin data")
        r, c = int(shape[0]), int(shape[1])
        if r < 1 or c < 1 or len(data) != r * c * 4:
            raise ValueError("inputs data size does not match its shape")
        return np.frombuffer(data, dtype="<f4").reshape(r, c)
    if isinstance(t, list) and t and all(isinstance(row, list) for row in t):
        arr = np.asarray(t, dtype=np.float32)
        if arr.ndim != 2:
            raise ValueError("inputs rows differ in length")
        return arr
    raise ValueError("inputs is neither a tensor nor an array of arrays")


def error_result(jid, code, message):
    return {"v": 1, "id": jid, "type": "result", "status": "error",
            "error": {"code": code, "message": message}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bind", required=True)
    ap.add_argument("--model", required=True, help="a quern.mlp.v1 .safetensors file")
    ap.add_argument("--name", help="served model name (default: from the path)")
    ap.add_argument("--max-batch", type=int, default=64,
                    help="most jobs drained into one forward pass")
    args = ap.parse_args()

    np.seterr(over="ignore", under="ignore")  # sigmoid/softmax of extreme logits: 0 or 1 is right
    mlp = MLP(args.model)
    name, version = model_name_of(args.model)
    if args.name:
        name = args.name

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100000)
    sock.setsockopt(zmq.SNDHWM, 100000)
    sock.bind(args.bind)
    print(f"baseline_worker: {name} v{version} ({mlp.in_dim} -> {mlp.out_dim}) on {args.bind}",
          file=sys.stderr, flush=True)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    unpackb = msgpack.unpackb
    packb = msgpack.packb
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)

    served = 0
    while not stopping:
        try:
            if not poller.poll(200):
                continue
            batch = [sock.recv_multipart()]
            for _ in range(args.max_batch - 1):
                try:
                    batch.append(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
        except KeyboardInterrupt:
            break

        good = []  # (envelope, id, rows)
        xs = []
        for frames in batch:
            env, payload = frames[:-1], frames[-1]
            try:
                job = unpackb(payload, raw=False)
            except Exception:
                sock.send_multipart(env + [packb(error_result(None, "bad_message", "not msgpack"))])
                continue
            if not isinstance(job, dict):
                sock.send_multipart(env + [packb(error_result(None, "bad_message", "not a map"))])
                continue
            jid = job.get("id")
            if job.get("v") != 1 or job.get("type") != "predict" or "inputs" not in job:
                sock.send_multipart(env + [packb(error_result(jid, "bad_job", "not a v1 predict job"))])
                continue
            if job.get("model") != name:
                sock.send_multipart(env + [packb(error_result(jid, "unknown_model",
                                                              f"no model {job.get('model')!r}"))])
                continue
            if job.get("version") not in (None, version):
                sock.send_multipart(env + [packb(error_result(jid, "unknown_version",
                                                              f"only version {version}"))])
                continue
            try:
                x = decode_inputs(job["inputs"])
            except (ValueError, TypeError) as e:
                sock.send_multipart(env + [packb(error_result(jid, "bad_job", str(e)))])
                continue
            if x.shape[1] != mlp.in_dim:
                sock.send_multipart(env + [packb(error_result(
                    jid, "shape_mismatch", f"inputs have {x.shape[1]} columns, model wants {mlp.in_dim}"))])
                continue
            good.append((env, jid, x.shape[0]))
            xs.append(x)
        if not good:
            continue

        y = mlp.forward(xs[0] if len(xs) == 1 else np.concatenate(xs))
        y = np.ascontiguousarray(y, dtype="<f4")
        row = 0
        for env, jid, r in good:
            out = y[row:row + r]
            row += r
            res = {"v": 1, "id": jid, "type": "result", "status": "ok", "model": name,
                   "version": version, "cached": False,
                   "outputs": {"dtype": "f32", "shape": [r, mlp.out_dim], "data": out.tobytes()}}
            sock.send_multipart(env + [packb(res)])
        served += len(good)

    print(f"baseline_worker: stopping after {served} results", file=sys.stderr)
    sock.close()
    ctx.term()


if __name__ == "__main__":
    main()
