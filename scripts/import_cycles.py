#!/usr/bin/env python3
"""Finds import circles among the library's modules (src/, one module per file).

An edge A -> B is a path A names in B (`use crate::b::…`, `crate::b::…` inline, `super::…`,
`self::child::…`, or a child module used by its name), except a path to one of A's own ancestors
(a child naming its parent is how Rust modules are built, not a circle). Test modules
(`#[cfg(test)] mod tests { … }` at the end of a file) are left out. Prints each circle and exits
1 if there is one; prints "no import circle among N modules" and exits 0 otherwise.
Standard library only.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    rel = os.path.relpath(path, ROOT)
    parts = rel[:-3].split(os.sep)
    if parts == ["lib"]:
        return ("crate",)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return ("crate",) + tuple(parts)


def strip_tests(text):
    m = re.search(r"^#\[cfg\(test\)\]\s*\nmod tests \{", text, re.M)
    return text[: m.start()] if m else text


def paths_in(text):
    """Every path naming something, as lists of segments (`crate`, `super`, `self` or a name)."""
    out = []
    # `use` items, braces expanded one level.
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        item = re.sub(r"\s+", "", m.group(1))
        head, _, rest = item.partition("{")
        if rest:
            for inner in rest.rstrip("}").split(","):
                if inner and inner != "self":
                    out.append((head + inner).split("::"))
            out.append(head.rstrip(":").split("::"))
        else:
            out.append(item.split("::"))
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
        out.append(m.group(1).split("::"))
    return out


def main():
    files = []
    for d, _, names in os.walk(ROOT):
        if os.path.relpath(d, ROOT).split(os.sep)[0] == "bin":
            continue
        for n in names:
            if n.endswith(".rs") and n != "main.rs":
                files.append(os.path.join(d, n))
    mods = {module_of(f): f for f in files}
    edges = {m: set() for m in mods}
    for mod, f in mods.items():
        text = strip_tests(open(f, encoding="utf-8").read())
        children = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text, re.M))
        for p in paths_in(text):
            if not p or not p[0]:
                continue
            if p[0] == "crate":
                target = ("crate",) + tuple(p[1:])
            elif p[0] == "super":
                base = list(mod)
                while p and p[0] == "super":
                    base.pop()
                    p = p[1:]
                target = tuple(base) + tuple(p)
            elif p[0] == "self":
                target = mod + tuple(p[1:])
            elif p[0] in children:
                target = mod + tuple(p)
            else:
                continue
            # The longest module the path names.
            best = None
            for k in range(len(target), 0, -1):
                if target[:k] in mods:
                    best = target[:k]
                    break
            if best is None or best == mod or mod[: len(best)] == best:
                continue
            edges[mod].add(best)
    # Tarjan's strongly connected components.
    index, low, on, stack, sccs, n = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(mods):
        if v not in index:
            visit(v)
    name = lambda m: "::".join(m)
    for comp in sccs:
        comp = sorted(comp)
        print("import circle: " + " <-> ".join(name(m) for m in comp))
        for a in comp:
            for b in sorted(edges[a]):
                if b in comp:
                    print(f"  {name(a)} -> {name(b)}")
    if sccs:
        return 1
    print(f"no import circle among {len(mods)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
