#!/usr/bin/env python3
"""Lists functions of src/ longer than a limit (default 80 lines), test modules left out.
Usage: scripts/long_functions.py [LIMIT]. Standard library only."""
import os, re, sys

LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 80
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
found = []
for d, _, names in os.walk(ROOT):
    for n in names:
        if not n.endswith(".rs"):
            continue
        p = os.path.join(d, n)
        lines = open(p, encoding="utf-8").read().split("\n")
        end_main = next((i for i, l in enumerate(lines) if l.startswith("#[cfg(test)]")), len(lines))
        for i in range(end_main):
            m = re.match(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?fn\s+(\w+)", lines[i])
            if not m:
                continue
            indent = len(m.group(1))
            j = i
            while j < end_main and not lines[j].rstrip().endswith("{") and not lines[j].rstrip().endswith(";"):
                j += 1
            if lines[j].rstrip().endswith(";"):
                continue
            k = j + 1
            while k < end_main and not (lines[k].startswith(" " * indent + "}") and len(lines[k]) - len(lines[k].lstrip()) == indent):
                k += 1
            length = k - i + 1
            if length > LIMIT:
                found.append((length, os.path.relpath(p, os.path.dirname(ROOT)), i + 1, m.group(2)))
for length, p, line, name in sorted(found, reverse=True):
    print(f"{length:5} {p}:{line} {name}")
