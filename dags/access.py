"""On-demand operator actions, each audited: a working copy for the tier's cache term (retrieve) and legal holds."""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from imaging_lifecycle.airflow_glue import DEFAULT_ARGS, actor


@dag(
    dag_id="retrieve_copy",
    schedule=None,
    default_args=DEFAULT_ARGS,
    catchup=False,
    tags=["imaging", "access", "retention"],
    params={"catalog_id": Param("", type="string", minLength=32, maxLength=32),
            # empty: the tier's whole cache term; more than the tier allows is capped to it
            "hours": Param(None, type=["null", "integer"], minimum=1, maximum=72)},
    doc_md="Re-encrypt a working copy into the cache zone under a fresh per-grant key, for at most the tier's "
           "cache term (the policy's; never over 72 hours); deleted by the sweeper at its deadline. A tier whose "
           "zones exclude the cache is refused.",
)
def retrieve_copy():
    @task
    def retrieve() -> dict:
        from imaging_lifecycle import retention
        from imaging_lifecycle.services import Services

        context = get_current_context()
        grant = retention.retrieve(Services.open(), context["params"]["catalog_id"], actor=actor(context),
                                   hours=context["params"]["hours"])
        return grant.public()

    retrieve()


@dag(
    dag_id="legal_hold",
    schedule=None,
    default_args=DEFAULT_ARGS,
    catchup=False,
    tags=["imaging", "retention"],
    params={"catalog_id": Param("", type="string", minLength=32, maxLength=32),
            "held": Param(True, type="boolean")},
    doc_md="Place or release a legal hold. A held object is never deleted, whatever its deadline.",
)
def legal_hold():
    @task
    def set_hold() -> dict:
        from imaging_lifecycle import retention
        from imaging_lifecycle.services import Services

        context = get_current_context()
        return retention.set_legal_hold(Services.open(), context["params"]["catalog_id"], context["params"]["held"],
                                        actor=actor(context))

    set_hold()


retrieve_copy()
legal_hold()
