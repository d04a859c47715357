"""The layout the design promises: a leaf config, one builder edge, no name shadowing a module, no
import cycle, and no public function of more than twelve parameters."""

import ast
import pkgutil
import sys
from pathlib import Path

import sgm

SGM = Path(sgm.__file__).resolve().parent


def _modules():
    for path in sorted(SGM.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _sgm_imports(path: Path, tree: ast.Module) -> set[str]:
    """Modules of sgm that `path` imports (relative imports resolved)."""
    package = ".".join(("sgm", *path.relative_to(SGM).with_suffix("").parts[:-1]))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod.startswith("sgm"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("sgm"))
    return out


def test_config_is_a_leaf():
    tree = ast.parse((SGM / "config.py").read_text())
    assert _sgm_imports(SGM / "config.py", tree) <= {"sgm.errors", "sgm.errors.ConfigError"}


def test_only_the_builder_takes_a_config():
    offenders = []
    for path, tree in _modules():
        if path.name in ("build.py", "config.py"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                for a in args:
                    hint = ast.unparse(a.annotation) if a.annotation else ""
                    if a.arg in ("cfg", "config") or "Config" in hint:
                        offenders.append(f"{path.relative_to(SGM)}:{node.lineno} {node.name}({a.arg})")
        if any(m.startswith("sgm.config") for m in _sgm_imports(path, tree)):
            offenders.append(f"{path.relative_to(SGM)} imports sgm.config")
    assert not offenders, offenders


def test_no_public_name_shadows_a_submodule():
    submodules = {m.name for m in pkgutil.iter_modules(sgm.__path__)}
    for name in sgm.__all__:
        assert name not in submodules, name
        obj = getattr(sgm, name)
        assert not (hasattr(obj, "__path__") or type(obj).__name__ == "module"), name


def _is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`, whose body runs when the file is a program, never on import."""
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name)
            and t.left.id == "__name__" and len(t.comparators) == 1
            and isinstance(t.comparators[0], ast.Constant) and t.comparators[0].value == "__main__")


def _import_graph() -> dict[str, set[str]]:
    """Each module of sgm (a package by its `__init__`) and the modules of sgm it imports, wherever
    the import stands: at the top, inside a function (a lazy import), or by name through
    `importlib.import_module("sgm....")`. `from package import name` imports `package.name` when
    that is a module, else the package (a name it re-exports). A submodule's own packages, which
    Python initialises first, and `if __name__ == "__main__":` blocks are left out."""
    names = {}
    for path in SGM.rglob("*.py"):
        parts = path.relative_to(SGM).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        names[".".join(("sgm", *parts))] = path
    graph = {}
    for mod, path in names.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        found, todo = set(), [ast.parse(path.read_text(), filename=str(path))]
        while todo:
            node = todo.pop()
            if _is_main_block(node):
                todo.extend(node.orelse)
                continue
            todo.extend(ast.iter_child_nodes(node))
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:
                    found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in names else base)
            elif (isinstance(node, ast.Call) and node.args
                  and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                  and ast.unparse(node.func).split(".")[-1] == "import_module"):
                found.add(node.args[0].value)
        graph[mod] = {m for m in found if m in names and m != mod and not mod.startswith(m + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle `[a, b, ..., a]` through each back edge a depth-first walk of `graph` meets."""
    done, path, cycles = set(), [], []

    def visit(u):
        path.append(u)
        for v in sorted(graph[u]):
            if v in path:
                cycles.append(path[path.index(v):] + [v])
            elif v not in done:
                visit(v)
        path.pop()
        done.add(u)

    for mod in sorted(graph):
        if mod not in done:
            visit(mod)
    return cycles


def test_the_walk_finds_imports_wherever_they_stand():
    """The graph the next test searches sees lazy imports, re-exports and relative imports."""
    graph = _import_graph()
    assert {"sgm.build", "sgm.quality", "sgm.checkpoint", "sgm.plot"} <= graph["sgm.run"]
    assert "sgm.run" in graph["sgm.quality_cli"] and "sgm.errors" in graph["sgm.config"]
    assert "sgm.nets.unet" in graph["sgm.nets"]  # a package's re-exports
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """Arrows run one way: no module of sgm imports, even lazily inside a function, a module that
    imports it back (directly or through others)."""
    cycles = [" -> ".join(c) for c in _cycles(_import_graph())]
    assert not cycles, cycles


#: the most parameters a public function of sgm takes; more knobs belong in option objects
MAX_PARAMETERS = 12


def _wide_functions(limit: int = MAX_PARAMETERS) -> list[str]:
    """Public functions and methods of sgm (names not starting with "_", nested ones included)
    with more than `limit` parameters: positional, keyword-only, *args and **kwargs each count
    one; a method's `self` or `cls` does not."""
    wide = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if (not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    or node.name.startswith("_")):
                continue
            a = node.args
            count = (len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg)
                     + bool(a.kwarg))
            if a.args and a.args[0].arg in ("self", "cls"):
                count -= 1
            if count > limit:
                wide.append(f"{path.relative_to(SGM)}:{node.lineno} {node.name} ({count})")
    return wide


def test_the_count_sees_every_kind_of_parameter(tmp_path, monkeypatch):
    """The count takes *args, **kwargs, keyword-only and positional-only parameters, skips `self`
    and private names, and looks inside classes and functions."""
    (tmp_path / "m.py").write_text(
        "def wide(a, /, b, *args, c, **kw): pass\n"
        "def _private(a, b, c, d, e): pass\n"
        "class K:\n"
        "    def method(self, a, b, c, *, d): pass\n"
        "def outer():\n"
        "    def inner(a, b, c, d, e, f): pass\n")
    monkeypatch.setattr(sys.modules[__name__], "SGM", tmp_path)
    found = _wide_functions(limit=3)
    assert found == ["m.py:1 wide (5)", "m.py:4 method (4)", "m.py:6 inner (6)"], found
    assert _wide_functions(limit=6) == []


def test_public_functions_take_at_most_twelve_parameters():
    """Options belong in small frozen objects (as diffrax passes `solver`, `stepsize_controller`
    and `adjoint`): no public function or method of sgm takes more than twelve parameters."""
    wide = _wide_functions()
    assert not wide, f"{len(wide)} take more than {MAX_PARAMETERS} parameters: {wide}"
