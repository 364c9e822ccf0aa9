"""Dependencies point one way (DESIGN.md): no two modules of lib/cpu/ call
each other, directly or around a loop. Read from the built library itself
(nm over libquern.a's members), so a call that a header hides, or one
made through an extern declaration, counts too: module A depends on B when
A's object file references a symbol that B's defines.

Issue 9 item 16: kernels.c (the dispatcher) called the representation
drivers quant.c, f16.c and csr.c, and they called back into kernels.c for
the scratch and the dense path. The shared helpers now live in kcommon.c,
below every kernel."""
import os
import subprocess
import sys

from qn_harness import BUILD, SRC


def symbols(lib):
    """{member: (defined set, undefined set)} from nm -A."""
    defs, undefs = {}, {}
    out = subprocess.run(["nm", "-A", lib], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        # "libquern.a:kernels.c.o:0000000000000000 T qn_kernel_layer_prepare"
        # or "libquern.a:kernels.c.o:                 U qn_i8_prepare"
        parts = line.rsplit(None, 2)
        if len(parts) < 2:
            continue
        head = line.split(":")
        member = head[1] if len(head) > 2 else head[0]
        kind, name = parts[-2], parts[-1]
        if kind == "U":
            undefs.setdefault(member, set()).add(name)
        elif kind.upper() in "TDBR" and kind.isupper():
            defs.setdefault(member, set()).add(name)
    return defs, undefs


def cycles(graph):
    """Every elementary cycle reachable, as lists of nodes (small graphs)."""
    found = []
    nodes = sorted(graph)

    def walk(start, node, path, seen):
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.append(path + [start])
            elif nxt not in seen and nxt > start:
                walk(start, nxt, path + [nxt], seen | {nxt})

    for s in nodes:
        walk(s, s, [s], {s})
    return found


def test_cpu_modules_acyclic():
    lib = os.path.join(BUILD, "libquern.a")
    assert os.path.exists(lib), lib
    cpu = {f[:-2] for f in os.listdir(os.path.join(SRC, "lib", "cpu")) if f.endswith(".c")}
    defs, undefs = symbols(lib)
    owner = {}
    for member, names in defs.items():
        mod = member[:-len(".c.o")] if member.endswith(".c.o") else None
        if mod in cpu:
            for n in names:
                owner[n] = mod
    graph = {}
    for member, names in undefs.items():
        mod = member[:-len(".c.o")] if member.endswith(".c.o") else None
        if mod not in cpu:
            continue
        for n in names:
            if n in owner and owner[n] != mod:
                graph.setdefault(mod, set()).add(owner[n])
    assert "kernels" in graph, "no dependencies found: nm output not understood (%s)" % sorted(graph)
    loops = cycles(graph)
    assert not loops, "lib/cpu modules call each other in a loop:\n" + "\n".join(
        " -> ".join(c) + "   (e.g. %s)" % ", ".join(sorted(
            n for n in undefs.get(c[0] + ".c.o", ()) if owner.get(n) == c[1])[:3]) for c in loops)


if __name__ == "__main__":
    try:
        test_cpu_modules_acyclic()
    except AssertionError as e:
        print("FAIL test_cpu_modules_acyclic\n%s" % e, flush=True)
        print("0 passed, 1 failed")
        sys.exit(1)
    print("ok   test_cpu_modules_acyclic\n1 passed, 0 failed")
