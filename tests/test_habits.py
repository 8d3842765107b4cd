"""The habits that keep the structure: the import-layering contract, ruff, and no import circle.

`make test` runs `lint-imports` and `ruff check` on the tree before pytest. These
tests show both fail on a violation: each plants one in a copy of the package
and runs the real tool against it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import PROJECT

BIN = PROJECT / ".venv" / "bin"


def _copy_tree(tmp_path):
    dst = tmp_path / "tree"
    shutil.copytree(PROJECT / "include", dst / "include", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(PROJECT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def _lint_imports(tree):
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=tree, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(tree / "include"), "PATH": str(BIN)})


def test_the_layering_contract_holds_and_fails_on_an_upward_import(tmp_path):
    tree = _copy_tree(tmp_path)
    ok = _lint_imports(tree)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    storage = tree / "include" / "imaging_lifecycle" / "storage.py"
    storage.write_text(storage.read_text() + "\nfrom imaging_lifecycle import protect  # an adapter reaching up\n")
    broken = _lint_imports(tree)
    assert broken.returncode != 0 and "BROKEN" in broken.stdout and "imaging_lifecycle.storage" in broken.stdout


def test_airflow_outside_the_glue_breaks_the_contract(tmp_path):
    tree = _copy_tree(tmp_path)
    stage = tree / "include" / "imaging_lifecycle" / "retention.py"
    stage.write_text(stage.read_text() + "\nimport airflow.sdk  # a stage that needs Airflow to run\n")
    broken = _lint_imports(tree)
    assert broken.returncode != 0 and "Airflow is imported only by" in broken.stdout


def test_ruff_passes_and_fails_on_a_violation(tmp_path):
    ok = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=PROJECT, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stdout
    tree = _copy_tree(tmp_path)
    bad = tree / "include" / "imaging_lifecycle" / "settings.py"
    bad.write_text(bad.read_text() + "\nimport os, sys  # two imports on one line, one unused\n")
    broken = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=tree, capture_output=True, text=True,
                            timeout=120)
    assert broken.returncode != 0 and "F401" in broken.stdout


def test_no_import_circle_is_left():
    """No module of the package imports, directly or through others, a module that imports it back."""
    code = """
import grimp, sys
g = grimp.build_graph("imaging_lifecycle")
circles = [m for m in g.modules
           if any(g.chain_exists(importer=i, imported=m) for i in g.find_modules_directly_imported_by(m))]
print("\\n".join(sorted(circles)))
sys.exit(1 if circles else 0)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(PROJECT / "include")})
    assert r.returncode == 0, f"modules in an import circle:\n{r.stdout}{r.stderr}"


def test_every_noqa_names_its_rule():
    import re

    bare = []
    for root in ("include", "dags", "plugins", "tests", "benchmarks"):
        for path in (PROJECT / root).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"#\s*noqa(?!:\s*[A-Z]+[0-9]+)", line):
                    bare.append(f"{path.relative_to(PROJECT)}:{n}")
    assert bare == []
