#!/usr/bin/env python3
"""Which top-level module of src/ imports which, and whether any import goes up a floor or
across to a sibling. A module "imports" another when its non-test code names `crate::m::…`,
or an item the crate root re-exports from `m` (`crate::Quota`, `crate::{Decision, …}`).
`super::` stays within a module and is not counted.

    python3 scripts/floors.py      # prints every edge, then the ones that break the floors
"""
import collections
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..", "src")
# Lowest first. A module may import from floors below its own, never from its own floor or
# above (the layers at the top are siblings: none imports another).
FLOORS = [
    ["logs", "human", "calendar"],
    ["metrics", "observe", "clock"],
    ["quota"],
    ["gcra"],
    ["key"],
    ["store"],
    ["headers"],
    ["limiter"],
    ["respond"],
    ["rate_limit", "concurrency", "retry", "learn", "admin"],
    # Built only under `cargo fuzz` (`--cfg fuzzing`): it reaches into every parser.
    ["fuzz"],
]
# What the crate root re-exports, by the module it comes from.
ROOT_ITEMS = {
    "Quota": "quota", "Quotas": "quota", "QuotaError": "quota",
    "Decision": "store", "MemoryStore": "store", "Store": "store", "StoreError": "store",
    "RateLimitLayer": "rate_limit", "RateLimited": "limiter", "RateLimiter": "limiter",
    "RetryLayer": "retry", "BoxError": None,
}


def modules_named(source):
    named = set()
    for m in re.finditer(r"crate::(\{[^}]*\}|\w+)", source):
        group = m.group(1)
        names = re.findall(r"\w+", group) if group.startswith("{") else [group]
        for name in names:
            if name in ROOT_ITEMS:
                if ROOT_ITEMS[name]:
                    named.add(ROOT_ITEMS[name])
            elif os.path.exists(os.path.join(ROOT, name + ".rs")) or os.path.isdir(
                os.path.join(ROOT, name)
            ):
                named.add(name)
    return named


edges = collections.defaultdict(set)
for directory, _, files in os.walk(ROOT):
    for file in files:
        if not file.endswith(".rs"):
            continue
        path = os.path.join(directory, file)
        top = os.path.relpath(path, ROOT).split(os.sep)[0].removesuffix(".rs")
        if top == "lib":
            continue
        source = open(path).read()
        source = re.sub(r"//[^\n]*", "", source)
        source = re.split(r"#\[cfg\(test\)\]\s*mod tests", source)[0]
        edges[top] |= modules_named(source) - {top}

floor = {m: i for i, ms in enumerate(FLOORS) for m in ms}
broken = []
for module, targets in sorted(edges.items()):
    for target in sorted(targets):
        print(f"{module} (floor {floor[module]}) -> {target} (floor {floor[target]})")
        if floor[target] >= floor[module]:
            broken.append((module, target))
print(f"{sum(map(len, edges.values()))} imports between modules; up a floor or across: {broken or 'none'}")
