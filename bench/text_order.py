"""Turns a callgrind profile of the sidecar into .cargo/text-order.txt.

Each line is a function's name without the parts of a Rust symbol that change
from build to build (the legacy `17h<hash>E` suffix becomes `17hE`, LTO's
`.NNN` and `.llvm.NNN` suffixes go), then its size as nm prints it, so
.cargo/ordered-cc can find the same function in the next build. Hottest first,
by the function's own instruction count.

    python3 bench/text_order.py callgrind.out target/release/datalayer-sidecar
"""

import re
import subprocess
import sys

HASH = re.compile(r"17h[0-9a-f]{16}E$")


def norm(name):
    name = HASH.sub("17hE", name)
    name = re.sub(r"\.llvm\.[0-9]+$", "", name)
    return re.sub(r"\.[0-9]+$", "", name)


def self_costs(profile, binary_name):
    """Instructions spent in each function of the binary, calls excluded."""
    objects, functions, cost = {}, {}, {}
    current_object = current = None
    skip_next = False
    name_line = re.compile(r"^(c?)(ob|fn)=\((\d+)\)(?: (.*))?$")
    for line in open(profile, errors="replace"):
        line = line.rstrip("\n")
        m = name_line.match(line)
        if m:
            called, kind, ident, name = m.groups()
            table = objects if kind == "ob" else functions
            if name:
                table[ident] = name
            if not called:
                if kind == "ob":
                    current_object = table[ident]
                else:
                    current = (current_object, table[ident])
            continue
        if line.startswith("calls="):
            skip_next = True  # the next cost line is the call's inclusive cost
            continue
        if current and line[:1] and (line[0].isdigit() or line[0] in "+-*"):
            if skip_next:
                skip_next = False
                continue
            parts = line.split()
            if len(parts) >= 2 and current[0] and current[0].endswith(binary_name):
                fn = re.sub(r"'\d+$", "", current[1])  # callgrind's recursion marker
                cost[fn] = cost.get(fn, 0) + int(parts[1])
    return cost


def main():
    profile, binary = sys.argv[1], sys.argv[2]
    sizes = {}
    nm = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True)
    for line in nm.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            sizes[parts[3]] = parts[1]
    cost = self_costs(profile, binary.rsplit("/", 1)[-1])
    seen = set()
    print("# Functions a running sidecar executes, hottest first: bench/text-order.sh")
    print("# writes it, .cargo/ordered-cc reads it. Name (build-specific parts removed), size.")
    for fn in sorted((f for f in cost if f in sizes), key=lambda f: (-cost[f], f)):
        key = (norm(fn), sizes[fn])
        if key not in seen:
            seen.add(key)
            print(key[0], key[1])


if __name__ == "__main__":
    main()
