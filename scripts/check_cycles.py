#!/usr/bin/env python3
"""Fails when modules of the crate import each other in a cycle.

Every `.rs` file under src/ is one module (a `mod.rs` is its folder's
module). An edge a -> b means a's code names something that b defines: a
`use` path or an inline `crate::`/`super::`/`self::` path, resolved through
`pub use` re-exports to the module that defines the item. A `pub use` that
only re-exports is not an edge: it gives a name, not a dependency. Edges
between a module and its own ancestors or descendants are not counted (a
parent owns its children).  Inline `mod tests { ... }` blocks are
skipped (test code may reach anywhere). The library (from src/lib.rs) and
the binary (from src/main.rs) are checked as the separate crates they are.

Usage: scripts/check_cycles.py [--graph] [SRC]   (exit 1 and the cycles if any)
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def strip_comments(text):
    """Removes comments and empties string and char literals, in one pass
    (a `//` inside a string is not a comment)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c, two = text[i], text[i:i + 2]
        if two == "//":
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif two == "/*":
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', text[i:i + 8]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            j = text.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            i = n if j < 0 else j + 1 + len(hashes)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12]):
            i += re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12]).end()
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_modules(text):
    """Removes `#[cfg(test)] mod x { ... }` bodies (brace-matched)."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


class Module:
    def __init__(self, path, file):
        self.path = path  # tuple of segments, () for the crate root
        self.file = file
        self.children = {}
        self.reexports = {}  # name -> full path tuple it re-exports
        self.code = ""


def module_tree(root_file):
    mods = {}

    def visit(path, file):
        m = Module(path, file)
        mods[path] = m
        m.code = drop_test_modules(strip_comments(file.read_text()))
        base = file.parent if file.name in ("mod.rs", "lib.rs", "main.rs") else file.with_suffix("")
        for name in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", m.code, re.M):
            for cand in (base / f"{name}.rs", base / name / "mod.rs"):
                if cand.exists():
                    m.children[name] = path + (name,)
                    visit(path + (name,), cand)
                    break

    visit((), root_file)
    return mods


def expand_use_tree(tree):
    """`a::{b, c::{d as f, e}}` -> [a::b, a::c::d as f, a::c::e]: aliases
    stay, for `segments` to read."""
    tree = tree.strip()
    if "{" not in tree:
        return [tree]
    head, _, rest = tree.partition("{")
    body = rest[: rest.rindex("}")]
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            for e in expand_use_tree(p):
                out.append(head + e if e != "self" else head.rstrip(":"))
    return out


USE = re.compile(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);")
INLINE = re.compile(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)")


def absolute(mod, segs):
    """Makes a path absolute (a tuple from the crate root), or None if external."""
    base = list(mod.path)  # `self` is the module itself, `super` its parent
    if segs[0] == "crate":
        return tuple(segs[1:])
    if segs[0] in ("self", "super"):
        while segs and segs[0] in ("self", "super"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
        return tuple(base) + tuple(segs)
    if segs[0] in mod.children:  # `use child::x` (2018 relative paths)
        return mod.path + tuple(segs)
    return None


def resolve(mods, path, depth=0):
    """The module that defines the item a path names."""
    cur = ()
    for i, seg in enumerate(path):
        m = mods[cur]
        if seg in m.children:
            cur = m.children[seg]
            continue
        if seg in m.reexports and depth < 10:
            return resolve(mods, m.reexports[seg] + tuple(path[i + 1:]), depth + 1)
        return cur
    return cur


ALIAS = re.compile(r"^(.*?)\s+as\s+(\w+)\s*$", re.S)


def segments(p):
    """A use path's segments and the name it binds: `a::b as c` binds c."""
    alias = ALIAS.match(p)
    path = alias.group(1) if alias else p
    segs = [s for s in path.replace(" ", "").split("::") if s]
    return segs, alias.group(2) if alias else (segs[-1] if segs else None)


def related(a, b):
    """A module and its ancestors or descendants: a parent owns its children
    (a `mod.rs` type whose helpers live in child files), so their mutual use
    is not counted; cycles are looked for between the rest."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def edges(mods):
    for m in mods.values():
        for pub, tree in USE.findall(m.code):
            if pub:
                for p in expand_use_tree(tree):
                    segs, name = segments(p)
                    full = absolute(m, segs) if segs else None
                    if full and not segs[-1] == "*":
                        m.reexports[name] = full
    graph = {p: set() for p in mods}
    for m in mods.values():
        code = USE.sub(lambda u: "" if u.group(1) else u.group(0), m.code)
        paths = []
        for _, tree in USE.findall(code):
            paths += expand_use_tree(tree)
        paths += INLINE.findall(USE.sub("", code))
        for p in paths:
            segs = [s for s in segments(p)[0] if s != "*"]
            full = absolute(m, segs) if segs else None
            if full is None:
                continue
            target = resolve(mods, full)
            if not related(m.path, target):
                graph[m.path].add(target)
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
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
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def name(path):
    return "::".join(path) or "crate"


def main():
    failed = False
    src = Path(next((a for a in sys.argv[1:] if not a.startswith("--")), SRC))
    if not any((src / root).exists() for root in ("lib.rs", "main.rs")):
        sys.exit(f"error: {src} holds neither lib.rs nor main.rs; pass a crate's src folder")
    for root in ("lib.rs", "main.rs"):
        if not (src / root).exists():
            continue
        mods = module_tree(src / root)
        graph = edges(mods)
        if "--graph" in sys.argv:
            for a in sorted(graph):
                print(f"{root}: {name(a)} -> {', '.join(sorted(name(b) for b in graph[a]))}")
        for comp in cycles(graph):
            failed = True
            members = set(comp)
            print(f"error: import cycle in the {root[:-3]} crate among {', '.join(sorted(name(c) for c in comp))}:")
            for a in sorted(comp):
                for b in sorted(graph[a] & members):
                    print(f"  {name(a)} -> {name(b)}")
    if failed:
        print("Break each cycle by moving what both sides need into a module both can import.")
        return 1
    print("no import cycles between modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
