"""sharpgen.codedeps: the import closure that rules declare as CODE(...) inputs."""

from __future__ import annotations

import os
from pathlib import Path

from sharpgen.codedeps import code_closure, imported_modules

MODULE = '''
import os
from sharpgen import a
if os.name:
    import sharpgen.b
else:
    from sharpgen.c import thing
try:
    from . import d
except ImportError:
    pass
finally:
    import sharpgen.e
with open(os.devnull):
    from .f import g
x = [i for i in range(3)]

def fn():
    from sharpgen import h
    for _ in range(2):
        while True:
            import sharpgen.i
            break

class K:
    import sharpgen.j

match x:
    case [_, *_]:
        import sharpgen.k
'''


def _package(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    pkg = src / "sharpgen"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text(MODULE)
    for name in "abcdefhijk":
        (pkg / f"{name}.py").write_text("")
    (pkg / "h.py").write_text("import sharpgen.deep\n")
    (pkg / "deep.py").write_text("")
    return src


def test_imports_found_in_every_statement_kind(tmp_path):
    src = _package(tmp_path)
    found = imported_modules(src / "sharpgen" / "main.py", src)
    for name in "abcdefhijk":
        assert any(m == f"sharpgen.{name}" or m.startswith(f"sharpgen.{name}.") for m in found), (name, found)
    top = imported_modules(src / "sharpgen" / "main.py", src, top_only=True)
    assert not {m for m in top if m.split(".")[1:2] in (["h"], ["i"], ["j"])}, top  # function / class bodies
    assert {"sharpgen.a", "sharpgen.b", "sharpgen.d", "sharpgen.k"} <= top


def test_closure_is_transitive_and_sees_an_edit(tmp_path):
    src = _package(tmp_path)
    names = {Path(p).name for p in code_closure(modules=["sharpgen.main"], src=src)}
    assert {"main.py", "h.py", "deep.py", "__init__.py"} <= names
    top = {Path(p).name for p in code_closure(modules=["sharpgen.h"], src=src, top_only_after_start=True)}
    assert top == {"h.py", "deep.py", "__init__.py"}
    # an edited file (new mtime) is parsed again, not served from the cache
    deep = src / "sharpgen" / "deep.py"
    deep.write_text("from sharpgen import a\n")
    st = deep.stat()
    os.utime(deep, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "a.py" in {Path(p).name for p in code_closure(modules=["sharpgen.main"], src=src)}
