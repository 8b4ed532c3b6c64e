"""Which sharpgen source files a workflow script depends on: the import closure.

Each Snakemake rule declares the ``src/sharpgen`` files its script imports (directly or through
other sharpgen modules, including imports inside functions) as inputs, so that editing a module
reruns exactly the rules that use it. :func:`code_closure` computes that set by parsing the
sources with :mod:`ast` (nothing is imported or executed).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path
from typing import Iterable

PACKAGE = "sharpgen"


def module_file(src: Path, module: str) -> Path | None:
    """'sharpgen.directions.traverse' -> src/sharpgen/directions/traverse.py (or a package's
    __init__.py); None when it is not a sharpgen source file."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = src.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _module_name(src: Path, path: Path) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _statements(tree: ast.AST, top_only: bool):
    """Every statement of the module (imports are statements, so expressions are never
    visited: several times faster than :func:`ast.walk`); with ``top_only`` none inside
    function and class bodies (what runs when the module is imported)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if node is not tree:
            yield node
        if top_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                stack.extend(c for c in children if isinstance(c, ast.AST))


def imported_modules(path: Path, src: Path, top_only: bool = False) -> set[str]:
    """Dotted names of the sharpgen modules ``path`` imports: anywhere in the file, or with
    ``top_only`` only at module level (what importing it runs). Each file is parsed once per
    version (cached on its path and mtime): every rule's closure shares the same modules, and
    parsing them again for each rule was most of the time of a `snakemake -n`."""
    p = Path(path)
    return set(_imported_modules(str(p), str(src), bool(top_only), p.stat().st_mtime_ns))


@lru_cache(maxsize=None)
def _imported_modules(path: str, src: str, top_only: bool, mtime_ns: int) -> frozenset[str]:
    src = Path(src)
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    try:
        here = _module_name(src, Path(path))
        is_pkg = Path(path).name == "__init__.py"
    except ValueError:  # a workflow script outside src/
        here, is_pkg = "", False
    out: set[str] = set()
    for node in _statements(tree, top_only):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                base = here.split(".") if is_pkg else here.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return frozenset(m for m in out if m.split(".")[0] == PACKAGE)


def module_files(src: Path, modules: Iterable[str]) -> set[Path]:
    """Source files run by importing ``modules``: importing a.b.c imports a and a.b too."""
    out = set()
    for m in modules:
        parts = m.split(".")
        for i in range(1, len(parts) + 1):
            mf = module_file(src, ".".join(parts[:i]))
            if mf is not None:
                out.add(mf)
    return out


def _file_deps(path: Path, src: Path, top_only: bool) -> frozenset[Path]:
    """The sharpgen source files importing ``path`` runs directly (importing a.b.c runs a and
    a.b too). Cached on the file's path and mtime like :func:`imported_modules` (a module
    file created later in the same process is not seen by an unchanged importer; a workflow
    run is one process per Snakefile parse)."""
    return _file_deps_cached(str(path), str(src), bool(top_only), Path(path).stat().st_mtime_ns)


@lru_cache(maxsize=None)
def _file_deps_cached(path: str, src: str, top_only: bool, mtime_ns: int) -> frozenset[Path]:
    srcp = Path(src)
    return frozenset(module_files(srcp, _imported_modules(path, src, top_only, mtime_ns)))


def _closure(src: str, start: tuple[str, ...], top_only_after_start: bool = False) -> tuple[str, ...]:
    srcp = Path(src)
    todo = [Path(p) for p in start]
    first = set(todo)
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        deps = _file_deps(f, srcp, top_only=top_only_after_start and f not in first)
        todo.extend(d for d in deps if d not in seen)
    return tuple(sorted(str(p) for p in seen if srcp in p.parents))


def code_closure(files: Iterable[str | Path] = (), modules: Iterable[str] = (),
                 src: str | Path = "src", top_only_after_start: bool = False) -> list[str]:
    """Sorted sharpgen source files (paths as ``<src>/sharpgen/...``) that the given scripts /
    source files and dotted ``modules`` import, transitively, themselves included.
    ``top_only_after_start``: follow only module-level imports beyond the given files (what
    actually runs when they are imported; imports inside functions are other code paths)."""
    srcp = Path(src)
    start = [Path(f) for f in files]
    for m in modules:
        mf = module_file(srcp, m)
        if mf is None:
            raise ValueError(f"{m} is not a module under {srcp}")
        start.append(mf)
    return list(_closure(str(srcp), tuple(str(p) for p in start), top_only_after_start))
