"""imaging-lifecycle: DICOM data from arrival to verified destruction, under policy.

Each lifecycle stage lives in one module of this package; DAG files under
``dags/`` only wire them together.
"""

__version__ = "0.1.0"
