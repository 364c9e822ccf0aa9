#!/usr/bin/python3
"""Writes the example messages of schemas/job.md and schemas/result.md as
.msgpack files beside this script, the way a Python client would produce them
(Debian's python3-msgpack; numpy only for the tensor form).

    /usr/bin/python3 schemas/examples/make_examples.py          # write the files
    /usr/bin/python3 schemas/examples/make_examples.py --show   # print them decoded

tests/unit/test_job.c decodes these files with the C codec, so the documented
examples and the code cannot drift apart. Re-run after changing an example and
commit the .msgpack files with it."""
import os
import sys

import msgpack
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def tensor(a):
    """A quern tensor map: f32, [rows, cols], little-endian row-major bytes."""
    a = np.ascontiguousarray(np.asarray(a, dtype="<f4"))
    if a.ndim == 1:
        a = a.reshape(1, -1)
    return {"dtype": "f32", "shape": list(a.shape), "data": a.tobytes()}


EXAMPLES = {
    # The common case: a tensor map, latest version, defaults for the rest.
    "predict_tensor": {
        "v": 1,
        "id": "req-0001",
        "type": "predict",
        "model": "iris_mlp",
        "inputs": tensor([[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 5.1, 1.8]]),
    },
    # Every optional field, an int id and inputs as plain nested lists.
    "predict_arrays": {
        "v": 1,
        "id": 42,
        "type": "predict",
        "model": "iris_mlp",
        "version": 3,
        "inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.1, 4.4, 1.4]],
        "reply_to": "quern.results.team-a",
        "deadline_ms": 1767225600000,
        "priority": 5,
        "cache": False,
    },
    # Invalid: the model name has a '/', so the worker answers bad_job (with
    # the id, since it could be read).
    "bad_job_model": {
        "v": 1,
        "id": "req-0002",
        "type": "predict",
        "model": "../etc/passwd",
        "inputs": [[1.0, 2.0]],
    },
    "result_ok": {
        "v": 1,
        "id": 42,
        "type": "result",
        "status": "ok",
        "model": "iris_mlp",
        "version": 3,
        "outputs": tensor([[0.97, 0.02, 0.01], [0.01, 0.12, 0.87]]),
        "cached": False,
    },
    "result_error": {
        "v": 1,
        "id": "req-0003",
        "type": "result",
        "status": "error",
        "error": {"code": "unknown_model", "message": "no model 'irs_mlp' in the repository"},
    },
}


def main():
    if "--show" in sys.argv:
        for name in EXAMPLES:
            with open(os.path.join(HERE, name + ".msgpack"), "rb") as f:
                print(name, msgpack.unpackb(f.read(), raw=False))
        return
    for name, msg in EXAMPLES.items():
        # use_bin_type=True (the default since msgpack 1.0) keeps bytes as bin
        # and str as str, as the contract requires.
        data = msgpack.packb(msg, use_bin_type=True)
        with open(os.path.join(HERE, name + ".msgpack"), "wb") as f:
            f.write(data)
        print(f"{name}.msgpack: {len(data)} bytes")


if __name__ == "__main__":
    main()
