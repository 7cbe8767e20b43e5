"""The package's layers, as the tree shows them: the engine imports nothing above it, nothing in patcher/
imports Prefect (only the command line and the demo start flows), and no two modules import each other, even
through a function-level import."""
import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# a module may import its own layer and the layers listed for it
ALLOWED = {
    "engine": {"engine"},
    "facts": {"engine", "facts", "models"},
    "models": {"engine", "facts", "models"},
    "pipeline": {"engine", "facts", "models", "pipeline"},
    "serving": {"engine", "facts", "models", "pipeline", "serving"},
    "top": {"engine", "facts", "models", "pipeline", "serving", "top", "flows"},
    "flows": {"engine", "facts", "models", "pipeline", "serving", "flows"},
}
ENGINE_THIRD_PARTY = {"torch", "transformers", "safetensors", "numpy", "tqdm", "yaml"}
ORCHESTRATION = {"prefect", "boto3", "botocore", "dvc", "gto", "great_expectations", "onnx", "onnxruntime",
                 "fastapi", "uvicorn"}


def modules() -> dict[str, Path]:
    found = {}
    for top in ("patcher", "flows"):
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = modules()


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "flows":
        return "flows"
    if len(parts) == 1 or parts[1] in ("cli", "demo", "__main__"):
        return "top"
    return parts[1]


def imports(module: str) -> set[str]:
    """Every module this one imports (top level or inside a function), as full dotted names."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES)
    return out


def project_imports(module: str) -> set[str]:
    return {name for name in imports(module) if name in MODULES and name != module
            and not (MODULES[name].name == "__init__.py" and module.startswith(name + "."))}


def test_no_module_imports_a_layer_above_its_own():
    wrong = [f"{m} ({layer(m)}) imports {t} ({layer(t)})" for m in MODULES for t in project_imports(m)
             if MODULES[t].name != "__init__.py" and layer(t) not in ALLOWED[layer(m)]]
    assert not wrong, "\n".join(wrong)


def test_the_engine_needs_only_torch_and_transformers():
    wrong = [f"{m} imports {t}" for m in MODULES if layer(m) == "engine" for t in imports(m)
             if t.split(".")[0] in ORCHESTRATION]
    assert not wrong, "\n".join(wrong)


def test_only_flows_import_prefect():
    wrong = [m for m in MODULES if not m.startswith("flows") and any(t.split(".")[0] == "prefect" for t in imports(m))]
    assert not wrong, wrong


def test_the_import_graph_has_no_cycle():
    graph = {m: project_imports(m) for m in MODULES}
    state: dict[str, int] = {}

    def visit(m, trail):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(t):] + [t]))
            if t not in state:
                visit(t, trail + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_patch_stage_depends_on_every_module_training_reads():
    # a module left out of the deps does not make `dvc repro` retrain when it changes (memory.py once was)
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["patch"]["do"]
    deps = [ROOT / d for d in stage["deps"] if str(d).startswith("patcher/")]
    seen, todo = set(), ["patcher.pipeline.train"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
            todo += [*project_imports(module), *parents]      # importing a module runs its packages' __init__
    assert len(seen) >= 20
    missing = sorted(str(MODULES[m].relative_to(ROOT)) for m in seen
                     if not any(MODULES[m] == d or d in MODULES[m].parents for d in deps))
    assert not missing, f"dvc.yaml's patch stage lacks deps on {missing}"
