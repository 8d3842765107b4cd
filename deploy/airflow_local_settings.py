"""Airflow's own hook (``airflow_local_settings``, imported by every Airflow process at start).

In the processes that start tasks, the scheduler (LocalExecutor forks its workers from it) and a
Celery worker (forks its pool from it), import once what the pipeline's tasks import anyway. Every
task runs in a forked process and inherits the loaded modules. Great Expectations alone takes about
3 s to import, and each gate task paid that again: 9 gate tasks in a 300-file run, about 30 s of
55 s of task time (``make bench``). Other Airflow processes import nothing more. The preloaded
modules are those of the process's start: restart the scheduler and workers after changing the
package (``platform down`` and ``up``).

The embedded platform copies this file to ``$AIRFLOW_HOME/config``; the image puts it there too.
"""

import sys as _sys

__all__: list[str] = []  # Airflow copies each public name of this module into airflow.settings: none


def _preload() -> None:
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations  # noqa: F401

    import imaging_lifecycle.deletion  # noqa: F401
    import imaging_lifecycle.gates.deid  # noqa: F401
    import imaging_lifecycle.gates.ingest  # noqa: F401
    import imaging_lifecycle.gates.protect  # noqa: F401
    import imaging_lifecycle.ingest  # noqa: F401
    import imaging_lifecycle.protect  # noqa: F401


if _sys.argv[1:2] == ["scheduler"] or _sys.argv[1:3] == ["celery", "worker"]:
    try:
        _preload()
    except Exception as _exc:  # only a speed-up: a broken import must not stop the scheduler or a worker
        print(f"imaging-lifecycle: preloading for tasks failed ({type(_exc).__name__}); tasks import it themselves",
              file=_sys.stderr)
