"""``imaging-lifecycle demo``: drop a handful of synthetic studies into the landing folder."""

from __future__ import annotations

HELP = "generate synthetic DICOM studies into the landing folder so work flows through the pipeline"


def add_arguments(parser) -> None:
    parser.add_argument("--if-first-run", action="store_true", help="only if no demo was ever generated here")


def run(args) -> int:
    from imaging_lifecycle.settings import load_settings
    from imaging_lifecycle.synthetic import write_demo

    settings = load_settings()
    marker = settings.state_dir / "demo-generated"
    if args.if_first_run and marker.exists():
        print("demo data was generated on an earlier run; 'make demo' adds more")
        return 0
    files = write_demo(settings.landing_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    print(
        f"wrote {len(files)} synthetic DICOM files ({len(files) // 3} studies) into {settings.landing_dir}\n"
        f"the ingest DAG starts once the folder has been quiet for a few seconds: watch {settings.airflow_url}"
    )
    return 0
