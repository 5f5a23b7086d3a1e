"""Attribute tables for QIDO-RS: query levels, their keys and their default return attributes.

Sources: PS3.18 10.6.3.3 (Tables 10.6.3-3/-4/-5, the attributes an origin server returns by
default) and PS3.4 C.6.2.1 (the Study Root Query/Retrieve Information Model, whose study level
also holds the patient-level attributes of Table C.6-1). Keyword, tag and VR come from pydicom's
data dictionary.
"""

from __future__ import annotations

import enum

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

__all__ = [
    "INSTANCE_MATCHING_KEYS",
    "INSTANCE_RETURN_TAGS",
    "SERIES_MATCHING_KEYS",
    "SERIES_RETURN_TAGS",
    "STUDY_MATCHING_KEYS",
    "STUDY_RETURN_TAGS",
    "Level",
    "level_of",
    "matching_keys",
    "name_of",
    "required_return_tags",
    "vr_of",
]


class Level(enum.Enum):
    """A level of the Study Root hierarchy, i.e. the resource a QIDO-RS search returns."""

    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"

    def __init__(self, value: str) -> None:
        # A plain attribute, not a property: searches compare depths per attribute returned.
        #: 0 for STUDY, 1 for SERIES, 2 for INSTANCE: a larger depth is a lower level.
        self.depth: int = ("study", "series", "instance").index(value)


def _tags(*keywords: str) -> tuple[int, ...]:
    tags: list[int] = []
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:  # a typo in a table below: fail at import, not at query time
            raise KeyError(f"{keyword} is not in pydicom's data dictionary")
        tags.append(tag)
    return tuple(tags)


# PS3.18 Table 10.6.3-3 "Study Resource Search Response Payload" (edition 2024c; editions up to
# 2019 also listed Specific Character Set (0008,0005), since dropped: DICOM JSON/XML is UTF-8).
STUDY_RETURN_TAGS: tuple[int, ...] = _tags(
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)

# PS3.18 Table 10.6.3-4 "Series Resources Search Response Payload". The table asks for two items
# of Request Attributes Sequence, >Scheduled Procedure Step ID and >Requested Procedure ID; a
# flat tag list names the sequence only.
SERIES_RETURN_TAGS: tuple[int, ...] = _tags(
    "Modality",
    "TimezoneOffsetFromUTC",
    "SeriesDescription",
    "RetrieveURL",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)

# PS3.18 Table 10.6.3-5 "Instance Resources Search Response Payload".
INSTANCE_RETURN_TAGS: tuple[int, ...] = _tags(
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)

# Matching keys of the Study Root model. Study level = the patient keys (PS3.4 Table C.6-1) plus
# the study keys (Table C.6-2/C.6-5), and the IHE RAD-14 additions.
STUDY_MATCHING_KEYS: tuple[int, ...] = _tags(
    # patient
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "ReferencedPatientSequence",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
    # study
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyID",
    "StudyInstanceUID",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    "OtherStudyNumbers",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "AnatomicRegionsInStudyCodeSequence",
    "ReferencedStudySequence",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
)

# Series level (PS3.4 Table C.6-3 and PS3.18 Table 10.6.3-4).
SERIES_MATCHING_KEYS: tuple[int, ...] = _tags(
    "Modality",
    "SeriesNumber",
    "SeriesInstanceUID",
    "NumberOfSeriesRelatedInstances",
    "SeriesDescription",
    "SeriesDescriptionCodeSequence",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
    "Laterality",
    "ProtocolName",
    "OperatorsName",
    "PerformingPhysicianName",
    "Manufacturer",
    "ManufacturerModelName",
    "StationName",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID",
    "PerformedProcedureStepDescription",
    "ReferencedPerformedProcedureStepSequence",
    "RequestAttributesSequence",
)

# Instance level (PS3.4 Table C.6-4 and PS3.18 Table 10.6.3-5).
INSTANCE_MATCHING_KEYS: tuple[int, ...] = _tags(
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
    "AlternateRepresentationSequence",
    "RelatedGeneralSOPClassUID",
    "ConceptNameCodeSequence",
    "ContentTemplateSequence",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "ImageType",
    "ContentDate",
    "ContentTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "AcquisitionNumber",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentLabel",
    "ContentDescription",
    "ContentCreatorName",
    "PresentationCreationDate",
    "PresentationCreationTime",
    "CompletionFlag",
    "VerificationFlag",
    "ObservationDateTime",
    "DocumentTitle",
    "MIMETypeOfEncapsulatedDocument",
    "ContainerIdentifier",
    "ImageComments",
)

_RETURN_TAGS: dict[Level, tuple[int, ...]] = {
    Level.STUDY: STUDY_RETURN_TAGS,
    Level.SERIES: SERIES_RETURN_TAGS,
    Level.INSTANCE: INSTANCE_RETURN_TAGS,
}
_MATCHING_KEYS: dict[Level, tuple[int, ...]] = {
    Level.STUDY: STUDY_MATCHING_KEYS,
    Level.SERIES: SERIES_MATCHING_KEYS,
    Level.INSTANCE: INSTANCE_MATCHING_KEYS,
}
# Attributes found at every level (Timezone Offset From UTC, Instance Availability, Retrieve URL)
# are in no matching-key table, so they have no level.
_LEVEL_OF: dict[int, Level] = {tag: level for level, tags in _MATCHING_KEYS.items() for tag in tags}

# Groups that never hold a queryable data set attribute: command (0000), file meta (0002) and
# item delimitation (FFFE); odd groups 0001-0007 and FFFF may not be private (PS3.5 7.8.1).
_NOT_QUERYABLE_GROUPS = frozenset({0x0000, 0x0001, 0x0002, 0x0003, 0x0005, 0x0007, 0xFFFE, 0xFFFF})


def required_return_tags(level: Level) -> tuple[int, ...]:
    """Attributes an origin server returns for each match at ``level`` (PS3.18 10.6.3.3).

    For a search of all series or all instances PS3.18 also asks for the attributes of the
    levels above; that is the caller's to add.
    """
    return _RETURN_TAGS[level]


def matching_keys(level: Level) -> tuple[int, ...]:
    """The keys of ``level`` in the Study Root Query/Retrieve Information Model (PS3.4 C.6.2.1)."""
    return _MATCHING_KEYS[level]


def level_of(tag: int) -> Level | None:
    """The Study Root level (PS3.4 C.6.2.1) that ``tag`` belongs to.

    ``None`` if it is no key of the hierarchy (private tags, attributes present at every level,
    anything not in the tables): the caller treats it as belonging to the lowest level queried.
    """
    return _LEVEL_OF.get(tag)


def vr_of(tag: int) -> str | None:
    """The VR of ``tag`` (PS3.6 Table 6-1), or ``None`` if it names no queryable attribute.

    Private creators (gggg,0010-00FF) are LO; private data elements (gggg,1000-FFFF) are "UN", as
    their VR is known only to their creator (PS3.5 7.8.1). Where the dictionary gives a choice
    ("US or SS") the first VR is taken.
    """
    group, element = tag >> 16, tag & 0xFFFF
    if not 0 <= tag <= 0xFFFFFFFF or group in _NOT_QUERYABLE_GROUPS:
        return None
    if group % 2:
        if 0x0010 <= element <= 0x00FF:
            return "LO"
        return "UN" if element >= 0x1000 else None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return None if vr == "NONE" else vr.split(" or ")[0]


def name_of(tag: int) -> str:
    """The canonical query parameter name of ``tag`` (PS3.18 8.3.4.1).

    Its keyword, or 8 upper-case hex digits when it has none that maps back to it (private tags,
    repeating groups such as 6002,3000).
    """
    keyword = keyword_for_tag(tag)
    if keyword and tag_for_keyword(keyword) == tag:
        return str(keyword)
    return f"{tag:08X}"
