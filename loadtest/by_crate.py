#!/usr/bin/env python3
"""Instructions per request by the crate their code comes from, from a callgrind profile.

    loadtest/by_crate.py CALLGRIND_OUT [REQUESTS]     # REQUESTS: 4000, instructions.sh's N

Reads `callgrind_annotate --inclusive=no` (self cost per function, every thread) of a file that
loadtest/instructions.sh kept, and sums each function's own instructions under the crate whose
source they were compiled from: the registry crate of the function's file, `scoregate` for
src/, `libc` for glibc (malloc, memcpy), `aws-lc` for its C and assembly. Generic code of the
standard library (`Vec::push` inlined into a caller) counts for the crate of the function it
was inlined into, so `scoregate` holds what scoregate's own functions execute, wherever the
code was written. Prints one Markdown row per crate: instructions per request and the share.
"""

import collections
import re
import subprocess
import sys

REGISTRY = re.compile(r"index\.crates\.io-[0-9a-f]+/([A-Za-z0-9_-]+?)-\d+\.\d+\.\d+")
ROW = re.compile(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*)$")
# Crates shown under one name: tokio-util with tokio, tokio-rustls with rustls.
ALIASES = {"tokio-util": "tokio", "tokio_util": "tokio", "tokio-rustls": "rustls"}


def crate_of(location: str) -> str:
    file, _, function = location.partition(":")
    registry = REGISTRY.search(file)
    if registry:
        name = registry.group(1)
    elif file.startswith(("src/", "/work/")) and "/rustc/" not in file:
        name = "scoregate"
    elif "libc.so" in location or file.startswith("./"):
        name = "libc"
    elif file.startswith("/aws-lc") or "aws_lc" in function:
        name = "aws-lc"
    else:
        # Standard library source (or no file): the function's own crate, `<scoregate::X as
        # Trait>::f` and `scoregate::f` alike.
        owner = re.match(r"<?([a-z0-9_]+)::", function)
        name = owner.group(1) if owner else "other"
        if name in ("core", "alloc", "std"):
            name = "std"
    return ALIASES.get(name, name)


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    requests = int(sys.argv[2]) if len(sys.argv) == 3 else 4000
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", sys.argv[1]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = text.split("file:function", 1)[1].splitlines()
    total_line = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text)
    program = int(total_line.group(1).replace(",", "")) if total_line else 0
    per_crate = collections.Counter()
    for line in rows:
        m = ROW.match(line)
        if not m:
            continue
        count = int(m.group(1).replace(",", ""))
        # callgrind_annotate repeats the program's entry points (main, the runtime's start)
        # with the whole program's cost; they are not self cost.
        if program and count * 2 > program:
            continue
        per_crate[crate_of(m.group(2))] += count
    total = sum(per_crate.values())
    print("| crate | instructions per request | share |")
    print("|---|---|---|")
    for crate, count in per_crate.most_common():
        if count / requests < 50:
            continue
        print(f"| {crate} | {count / requests:,.0f} | {100 * count / total:.1f} % |")
    print(f"| all | {total / requests:,.0f} | |")


if __name__ == "__main__":
    main()
