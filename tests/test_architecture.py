"""The import direction of docs/ARCHITECTURE.md: the loop writes, everything else reads; rules stay torch-free."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"hooks": "babysit.hooks", "rules": "babysit.rules", "monitor": "babysit.monitor",
            "trainer": "babysit.trainer", "babysit": "babysit"}
FORMAT = ("babysit.monitor.runfile", "babysit.monitor.reader", "babysit.monitor.fastread",
          "babysit.monitor.importers")


def _area(module: str) -> str:
    if module.startswith("babysit.rules"):
        return "rules"
    if module.startswith("babysit.hooks"):
        return "hooks"
    if module.startswith("babysit.trainer"):
        return "trainer"
    if module.startswith(FORMAT):
        return "format"
    if module.startswith("babysit.monitor"):
        return "apps"
    if module in ("babysit.errors", "babysit.vocabulary"):
        return "errors"  # neutral: they import nothing of babysit
    return "root"


ALLOWED = {
    "errors": set(),
    "rules": {"rules", "errors"},
    "format": {"format", "errors"},
    "hooks": {"hooks", "rules", "format", "errors", "root"},
    "apps": {"apps", "rules", "format", "errors", "root"},
    "trainer": {"trainer", "hooks", "rules", "format", "errors", "root"},
    "root": {"root", "hooks", "apps", "errors"},  # babysit/__init__ (lazy Run) and __main__ (the CLI)
}
TORCH_FREE = {"rules", "format", "apps", "errors"}


def _modules():
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from babysit.monitor import runfile` imports the module babysit.monitor.runfile
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield sub if sub in KNOWN else node.module


MODULES = list(_modules())
KNOWN = {m for m, _ in MODULES}


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_follow_the_architecture(module, path):
    area = _area(module)
    bad = []
    for name in _imports(path):
        if name.split(".")[0] in ("hooks", "rules", "monitor", "trainer"):
            bad.append(f"{name} (old top-level name: use babysit.{name})")
        elif name.startswith("babysit.") and _area(name) not in ALLOWED[area]:
            bad.append(f"{name} ({_area(name)})")
        elif name.split(".")[0] == "torch" and area in TORCH_FREE and not module.endswith(("demo", "gpu")):
            bad.append(f"{name} (the {area} layer is torch-free)")
    assert not bad, f"{module} ({area}) imports {bad}"


def test_the_walk_sees_every_package():
    areas = {_area(m) for m, _ in MODULES}
    assert {"rules", "hooks", "trainer", "format", "apps", "errors", "root"} <= areas
