"""imaging-lifecycle: DICOM data from arrival to verified destruction, under policy.

Each lifecycle stage lives in one module of this package; DAG files under
``dags/`` only wire them together.
"""

__version__ = "0.1.0"


def _quiet_pydicom() -> None:
    """pydicom logs and warns with the offending *value* of a malformed element
    (e.g. ``Invalid value for VR UI: '<a patient id>'``), which would put
    identifiers into task logs. We validate what we need ourselves, so its
    value checks are switched off and its logger only speaks on errors,
    without values we pass on."""
    import logging
    import warnings

    try:
        import pydicom.config as cfg
    except ImportError:  # pragma: no cover - pydicom is a hard dependency
        return
    cfg.settings.reading_validation_mode = cfg.IGNORE
    cfg.settings.writing_validation_mode = cfg.IGNORE
    logger = logging.getLogger("pydicom")
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")


_quiet_pydicom()
