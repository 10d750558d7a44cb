"""Packaging, layout and the README contract."""

from __future__ import annotations

import ast
import importlib.machinery
import os
import re
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {
    "memsdk": "memsdk",
    "engine": "memsdk.engine",
    "kernels": "memsdk.kernels",
    "stores": "memsdk.stores",
}
STDLIB = set(sys.stdlib_module_names)
# Leaf modules of memsdk (standard library and memsdk.errors only) that every layer may import.
LEAVES = ("memsdk.encoding", "memsdk.errors", "memsdk.files")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_top_level_layout():
    for name in ("memsdk", "engine", "kernels", "stores", "examples", "tests", "pyproject.toml"):
        assert (REPO / name).exists(), name


def test_every_package_folder_is_installed_under_memsdk():
    tool = _pyproject()["tool"]["setuptools"]
    assert tool["package-dir"] == {v: k for k, v in FOLDERS.items()}
    expected = set()
    for folder, package in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            expected.add(".".join([package, *rel.parts]))
    assert set(tool["packages"]) == expected


def test_dependencies_point_one_way():
    """memsdk -> engine -> kernels; memsdk -> stores; stores never imports engine; kernels
    import only torch, triton and the standard library; langchain_core only in its adapter."""
    for folder in FOLDERS:
        for path in _sources(folder):
            for name in _imports(path):
                top = name.split(".")[0]
                where = f"{path.relative_to(REPO)} imports {name}"
                assert top not in ("engine", "kernels", "stores"), where + " (use memsdk.*)"
                if top == "langchain_core":
                    assert path == REPO / "memsdk/integrations/langchain.py", where
                if folder == "kernels":
                    assert top in STDLIB | {"torch", "triton"} or name.startswith(
                        "memsdk.kernels"
                    ), where
                if folder == "stores":
                    assert not name.startswith("memsdk.engine"), where
                    if top == "memsdk":
                        assert name.startswith((*LEAVES, "memsdk.stores")), where
                if folder == "engine":
                    assert top not in ("sqlalchemy", "faiss"), where
                    assert not name.startswith("memsdk.stores"), where
                    if top == "memsdk":
                        assert name.startswith((*LEAVES, "memsdk.engine", "memsdk.kernels")), where


def test_no_pickle_anywhere():
    for folder in (*FOLDERS, "examples", "benchmarks", "scripts"):
        for path in _sources(folder):
            names = _imports(path)
            assert not names & {"pickle", "dill", "cloudpickle"}, path
            source = path.read_text()
            for call in re.findall(r"torch\.load\([^)]*\)", source):
                assert "weights_only=True" in call, f"{path}: {call}"


def test_readme_has_two_setup_commands_and_its_example_runs(tmp_path):
    readme = (REPO / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("##", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", setup, re.S)
    commands = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.strip()]
    assert commands == ["make demo", "make test"]
    ci = (REPO / ".ci/run").read_text()
    assert "make test" in ci
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    assert len(example.strip().splitlines()) <= 12
    quickstart = (REPO / "examples/quickstart.py").read_text()
    assert example.strip() in quickstart
    out = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "Ticket 4812: VPN drops after sleep" in out.stdout and "['ADD']" in out.stdout
    assert (tmp_path / "agent-memory" / "manifest.json").exists()


@pytest.mark.slow
def test_the_wheel_installs_one_namespace(tmp_path):
    """Build the wheel, check its contents, install it alone and import it from elsewhere."""
    dist = tmp_path / "dist"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("memsdk-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"memsdk", f"{wheel.name.split('-py3')[0]}.dist-info"}, tops
    for required in (
        "memsdk/engine/__init__.py",
        "memsdk/kernels/__init__.py",
        "memsdk/stores/sql.py",
        "memsdk/stores/embedder.py",
        "memsdk/py.typed",
        "memsdk/router_default.json",
        "memsdk/engine/weights/default/index.json",
        "memsdk/engine/weights/default/shard-00001.safetensors",
        "memsdk/engine/weights/small-plain/index.json",
    ):
        assert required in names
    shipped = sum(
        i.file_size for i in zipfile.ZipFile(wheel).infolist() if "/weights/" in i.filename
    )
    assert shipped <= 60 * 1024 * 1024  # the shipped models stay within 60 MB
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "memsdk = memsdk.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    recorded = zipfile.ZipFile(wheel).read(record).decode().splitlines()
    assert {line.split("/")[0] for line in recorded} == tops  # RECORD lists the same top names
    top_level = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    for name in top_level:
        assert zipfile.ZipFile(wheel).read(name).decode().split() == ["memsdk"]

    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    installed = {p.name for p in target.iterdir()} - {"bin"}  # bin/: the console script
    assert installed == tops, installed
    probe = (
        "import memsdk, memsdk.engine, memsdk.kernels, memsdk.stores.sql;"
        "model, _, _ = memsdk.engine.load_model();"  # the default model loads from the wheel
        "print(memsdk.__file__, memsdk.kernels.__file__, memsdk.stores.sql.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert all(f.startswith(str(target / "memsdk")) for f in out.stdout.split()), out.stdout


def _installed_kernels(site: Path) -> Path:
    """A distribution named ``kernels`` (as on PyPI, which transformers imports), installed
    into ``site``: its package and its dist-info."""
    package = site / "kernels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("ORIGIN = 'the installed distribution'\n")
    info = site / "kernels-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.0.1\n")
    (info / "RECORD").write_text("kernels/__init__.py,,\nkernels-0.0.1.dist-info/METADATA,,\n")
    return package / "__init__.py"


def test_the_repository_root_never_shadows_an_installed_package(tmp_path):
    """The test run does not have the checkout's root on sys.path (`make test` runs
    ``python -P -m pytest``): there the folders engine/, kernels/ and stores/ would be
    top-level packages, and kernels/ would hide the PyPI package of that name."""
    origin = _installed_kernels(tmp_path / "site")
    # Installed where pip installs: just before this environment's site-packages.
    installs = [i for i, p in enumerate(sys.path) if p in site.getsitepackages()]
    where = installs[0] if installs else len(sys.path)
    path = [*sys.path[:where], str(tmp_path / "site"), *sys.path[where:]]
    spec = importlib.machinery.PathFinder.find_spec("kernels", path)
    assert spec is not None and spec.origin == str(origin), (
        f"`import kernels` would load {spec and spec.origin}: {REPO} is on sys.path. Run the "
        "tests with `make test` or `python -P -m pytest`"
    )
    for folder in ("engine", "kernels", "stores"):
        spec = importlib.machinery.PathFinder.find_spec(folder, sys.path)
        assert spec is None or Path(spec.origin or "").parent != REPO / folder, spec


def test_make_runs_python_without_the_working_directory_on_sys_path(tmp_path):
    """Every Python that `make test` and `make demo` start from the repository root runs with
    -P; the same command then imports the installed `kernels`, not the folder."""
    dry = subprocess.run(
        ["make", "-n", "-o", ".venv/.dev", "-o", ".venv/.runtime", "test", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    commands = [line for line in dry.stdout.splitlines() if line.startswith(".venv/bin/python")]
    assert len(commands) == 2 and all(c.split()[1] == "-P" for c in commands), commands
    origin = _installed_kernels(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-P", "-c", "import kernels; print(kernels.__file__)"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == str(origin), out.stderr


@pytest.mark.parametrize("folder", ["engine", "kernels", "stores"])
def test_a_folder_imported_as_a_top_level_package_says_how_to_run_python(folder):
    """Python started in the root without -P finds the folders first: each refuses to load
    under its bare name and names the fix, instead of failing obscurely in another library."""
    out = subprocess.run(
        [sys.executable, "-c", f"import {folder}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert f"memsdk.{folder}" in out.stderr and "python -P" in out.stderr, out.stderr
