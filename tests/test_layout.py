"""The package layout: the control-image side and `import kcv_sd` load no
TensorFlow, and no two modules import each other."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import controlnet
import kcv_sd

LIGHT = "; ".join([
    "import sys",
    "import kcv_sd, kcv_sd.errors, kcv_sd.weight_cache",
    *(f"import controlnet.{m.name}" for m in pkgutil.iter_modules(controlnet.__path__)),
    "heavy = sorted({'tensorflow', 'keras', 'keras_cv', 'torch'} & set(sys.modules))",
    "print(heavy)",
])


def run(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_control_image_side_and_package_import_load_no_tensorflow():
    assert run(LIGHT) == "[]"


def test_a_generation_imports_neither_kerascv_nor_torch():
    """kcv-sd owns its blocks: importing KerasCV would import all of it, and
    torch first where torch is installed (docs/latency_levers.md, section 24)."""
    code = "; ".join([
        "import sys, kcv_sd",
        "kcv_sd.generate('a', width=64, height=64, model='tiny', weights='random', num_inference_steps=1,"
        " output_type='np', jit_compile=False)",
        "print(sorted({'keras_cv', 'torch', 'keras_hub'} & set(sys.modules)))",
    ])
    assert run(code) == "[]"


def project_imports(path, name):
    """The project modules that the module `name` (file `path`) imports,
    anywhere in it: at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module.split(".")[0] in ("kcv_sd", "controlnet")}


def test_module_imports_have_no_cycles():
    """No two project modules import each other, directly or round a loop,
    not even through an import inside a function."""
    files = {}
    for package in (kcv_sd, controlnet):
        root = Path(package.__path__[0])
        for path in root.rglob("*.py"):
            parts = path.relative_to(root.parent).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: {m for m in project_imports(path, name) if m in files and m != name}
             for name, path in files.items()}
    assert "kcv_sd.pipeline" in graph and "kcv_sd.step" in graph["kcv_sd.pipeline"]
    cycles = []

    def visit(name, trail):
        if name in trail:
            cycles.append(trail[trail.index(name):] + [name])
            return
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, trail + [name])
        done.add(name)

    done = set()
    for name in sorted(graph):
        visit(name, [])
    assert not cycles, cycles[:5]


def test_lazy_names_resolve_even_after_their_modules_are_imported():
    """Importing a submodule sets the package attribute of its name: a lazy
    name that is also a submodule's would then be the module."""
    assert not [name for name in kcv_sd._LAZY if (Path(kcv_sd.__path__[0]) / f"{name}.py").exists()]
    code = "import kcv_sd.generation, kcv_sd.pipeline, kcv_sd; print(kcv_sd.Pipeline.__module__, kcv_sd.generate.__name__)"
    assert run(code) == "kcv_sd.pipeline generate"
