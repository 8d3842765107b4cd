"""Which attributes hold free text, as the policy names them (``deid_options.keep_narrative``).

Tables of DICOM keywords, used by the de-identification engine
(:mod:`imaging_lifecycle.deid.free_text`) and by the policy schema, which
refuses a ``keep_narrative`` entry that is not narrative.
"""

from __future__ import annotations

#: Patient- and image-level narrative: free text a person typed. Removed unless the policy keeps it.
NARRATIVE: tuple[str, ...] = (
    "PatientComments",
    "AdditionalPatientHistory",
    "ImageComments",
    "StudyComments",
    "ResultsComments",
    "RequestedProcedureComments",
    "ImagingServiceRequestComments",
    "CommentsOnThePerformedProcedureStep",
    "VisitComments",
    "ReasonForTheRequestedProcedure",
    "ReasonForStudy",
    "MedicalAlerts",
    "Allergies",
    "PatientState",
    "Occupation",
    "FrameComments",
    "DerivationDescription",
    "AcquisitionComments",
    "TextComments",
    "TextString",
)

#: Descriptors Annex E cleans (action C under Clean Descriptors): only vocabulary words stay.
DESCRIPTORS: tuple[str, ...] = (
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "PerformedProcedureStepDescription",
    "RequestedProcedureDescription",
    "ScheduledProcedureStepDescription",
    "BodyPartExamined",
    "AcquisitionDeviceProcessingDescription",
    "ContrastBolusAgent",
    "ProcedureStepLabel",
)
