#!/usr/bin/env python3
"""Module dependencies of src/ and the cycles among them.

Every path a file names (`use crate::a::b`, `crate::a::f()`, `super::x`,
`self::y`, and `use` lines of sibling modules) is resolved to the module
file it points into; an edge A -> B means module A uses something of
module B. Declaring a child (`mod b;`) is not a use. Prints each module's
dependencies with --verbose, then every cycle (strongly connected group of
two or more modules); exits 1 when there is one.

    scripts/module-deps.py [--verbose]
"""

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\b(crate|super|self)((?:::\s*[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def module_of(path: Path) -> tuple:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    if parts and parts[0] == "bin":
        return ()  # binaries are roots of their own
    return tuple(parts)


def main() -> int:
    files = {}
    for f in sorted(SRC.rglob("*.rs")):
        if "bin" in f.relative_to(SRC).parts:
            continue
        files[module_of(f)] = f
    modules = set(files)

    def resolve(base: tuple, segs: list) -> tuple:
        """The deepest module named by base + segs."""
        cur = base
        for s in segs:
            if cur + (s,) in modules:
                cur = cur + (s,)
            else:
                break
        return cur

    def start(mod: tuple, head: str, file: Path) -> tuple:
        if head == "crate":
            return ()
        # `super` in a file foo.rs or foo/mod.rs is foo's parent.
        return mod[:-1] if head == "super" else mod

    deps = {m: set() for m in modules}
    for mod, file in files.items():
        text = file.read_text()
        # Strip comments (doc links are not uses).
        text = re.sub(r"//[^\n]*", "", text)
        targets = []
        for m in USE_GROUP.finditer(text):
            base = start(mod, m.group(1), file)
            prefix = [s for s in m.group(2).split("::") if s]
            while prefix and prefix[0] == "super":
                base = base[:-1]
                prefix = prefix[1:]
            for item in m.group(3).split(","):
                item = item.strip().split(" as ")[0].strip()
                if not item or item == "self":
                    targets.append(resolve(base, prefix))
                    continue
                segs = [s.strip() for s in item.split("::") if s.strip() and "{" not in s]
                targets.append(resolve(base, prefix + segs))
        for m in PATH.finditer(text):
            base = start(mod, m.group(1), file)
            segs = [s.strip() for s in m.group(2).split("::") if s.strip()]
            while segs and segs[0] == "super":
                base = base[:-1]
                segs = segs[1:]
            targets.append(resolve(base, segs))
        for t in targets:
            if t != mod and t and mod[: len(t)] != t:
                # A use of one's own ancestor's items (super::X defined in
                # mod.rs) counts too: mod.rs is a module like any other.
                deps[mod].add(t)
            elif t != mod and t and mod[: len(t)] == t:
                deps[mod].add(t)

    # A parent that only declares its children does not depend on them;
    # a parent that uses a child's items does (an edge already recorded).
    name = lambda m: "::".join(m) or "crate"
    if "--verbose" in sys.argv:
        for m in sorted(modules):
            print(f"{name(m)} -> {', '.join(sorted(name(d) for d in deps[m])) or '-'}")

    # Cycles at every level: modules as they are, then collapsed to their
    # ancestors (config -> gateway::admission and gateway -> config is a
    # cycle between config and gateway).
    depth = max(len(m) for m in modules)
    found = 0
    seen = set()
    for level in range(depth, 0, -1):
        cut = lambda m: m[:level]
        graph = {}
        for a in modules:
            for b in deps[a]:
                ca, cb = cut(a), cut(b)
                if ca != cb and ca[: len(cb)] != cb and cb[: len(ca)] != ca:
                    graph.setdefault(ca, set()).add(cb)
                graph.setdefault(cb, set())
            graph.setdefault(cut(a), set())
        for g in sccs_of(graph):
            key = frozenset(g)
            if key in seen:
                continue
            seen.add(key)
            found += 1
            members = sorted(g)
            print("cycle: " + " <-> ".join(name(m) for m in members))
            for a in modules:
                for b in sorted(deps[a]):
                    if cut(a) in g and cut(b) in g and cut(a) != cut(b):
                        print(f"    {name(a)} -> {name(b)}")
    if not found:
        print(f"{len(modules)} modules, no cycles at any level")
    return 1 if found else 0


def sccs_of(graph):
    """Tarjan's strongly connected components of two or more nodes."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(group)

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
