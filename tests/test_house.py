"""The layout the design promises: a leaf config, one builder edge, no name shadowing a module."""

import ast
import pkgutil
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
