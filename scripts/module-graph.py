#!/usr/bin/env python3
"""The module graph of the product crate (src/): each top-level module and
the top-level modules it names (`crate::x`), then a topological order, or
the cycle if there is one. Exits 1 on a cycle. Usage: scripts/module-graph.py [src]"""
import os, re, sys

src = sys.argv[1] if len(sys.argv) > 1 else "src"
mods = {}
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(root, f)
        rel = os.path.relpath(path, src)
        top = rel.split(os.sep)[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        text = re.sub(r"//[^\n]*", "", open(path).read())
        mods.setdefault(top, set()).update(
            m for m in re.findall(r"\bcrate::([a-z_]+)", text) if m != top
        )
names = sorted(mods)
for n in names:
    mods[n] &= set(names)
# Kahn's algorithm, users first (a module before what it uses).
users = {n: sum(n in mods[m] for m in names) for n in names}
order, ready = [], sorted(n for n in names if users[n] == 0)
while ready:
    n = ready.pop(0)
    order.append(n)
    for d in sorted(mods[n]):
        users[d] -= 1
        if users[d] == 0:
            ready.append(d)
for n in names:
    print(f"{n:10} -> {', '.join(sorted(mods[n])) or '-'}")
if len(order) < len(names):
    print("CYCLE among:", ", ".join(n for n in names if n not in order))
    sys.exit(1)
print("no cycle; top to bottom:", " > ".join(order))
