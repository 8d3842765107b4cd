"""Every DAG file imports cleanly and follows the house rules."""

from __future__ import annotations

import ast
import os

import pytest

from conftest import PROJECT

DAGS = PROJECT / "dags"

#: Airflow 2 spellings that Airflow 3 removed or deprecated.
DEPRECATED = {
    "airflow.operators.python", "airflow.operators.bash", "airflow.operators.empty", "airflow.sensors",
    "airflow.decorators", "airflow.datasets", "airflow.models.dag", "airflow.models.baseoperator",
    "airflow.utils.dates", "airflow.hooks.base", "airflow.models.dagbag",
}
DEPRECATED_KWARGS = {"schedule_interval", "timetable", "concurrency", "provide_context"}


@pytest.fixture(scope="module")
def dagbag():
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dag_files_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert len(dagbag.dags) >= 1


def test_every_dag_has_owner_tags_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id} has the default owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has retries={task.retries}"


def test_no_deprecated_airflow2_api_in_dags_or_package():
    files = list(DAGS.glob("*.py")) + list((PROJECT / "plugins").rglob("*.py")) + list(
        (PROJECT / "include").rglob("*.py")
    )
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not any(
                    node.module == d or node.module.startswith(d + ".") for d in DEPRECATED
                ), f"{path.name}: from {node.module} import ..."
                if node.module == "airflow":
                    assert not {a.name for a in node.names} & {"DAG", "Dataset"}, (
                        f"{path.name}: from airflow import DAG"
                    )
            if isinstance(node, ast.keyword):
                assert node.arg not in DEPRECATED_KWARGS, f"{path.name}: {node.arg}="


def test_dag_files_are_thin():
    """DAG files wire steps; logic lives in include/imaging_lifecycle."""
    for path in DAGS.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.For, ast.While)):
                raise AssertionError(f"{path.name}:{node.lineno}: loops belong in the package, not the DAG file")
