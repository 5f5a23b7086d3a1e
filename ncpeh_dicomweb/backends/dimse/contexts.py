"""Presentation contexts the gateway proposes and accepts: tables, and a pure planner.

A C-GET brings each instance back as a C-STORE sub-operation on the retrieving association
(PS3.4 C.4.3), in the transfer syntax of a presentation context accepted for its SOP class, with
the gateway in the SCP role of that class (SCP/SCU Role Selection, PS3.7 D.3.3.4). The acceptor
answers each proposed context with *one* transfer syntax (PS3.8 9.3.3.2), and an association has
at most 128 contexts (odd IDs 1-255, PS3.8 9.3.2.2). So to let every instance arrive as stored
(never transcoded by the PACS: the gateway decodes itself), each syntax an instance may be
stored in gets a context of its own, for the SOP classes the retrieved objects really hold
(learnt with a C-FIND, see :func:`study_classes_query`), shared out within the 128.

Nothing here does I/O: :func:`plan_retrieve` turns what the PACS said (:class:`Holdings`)
into a :class:`ContextPlan`; the pool opens associations for plans, the operations ask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from pydicom import Dataset
from pynetdicom import sop_class as _sop_class
from pynetdicom.presentation import AllStoragePresentationContexts

__all__ = [
    "ACCEPTED_SYNTAXES",
    "FALLBACK_CLASSES",
    "FIND_MODEL",
    "GET_MODEL",
    "KNOWN_STORAGE_CLASSES",
    "MAX_CONTEXTS",
    "MOVE_MODEL",
    "VERIFICATION",
    "Context",
    "ContextPlan",
    "Holdings",
    "candidate_syntaxes",
    "holdings_from_instances",
    "holdings_from_study",
    "instance_classes_query",
    "plan_retrieve",
    "query_plan",
    "study_classes_query",
]

VERIFICATION: Final = "1.2.840.10008.1.1"  # C-ECHO (PS3.4 A.4)
# Study Root Query/Retrieve Information Model (PS3.4 C.6.2)
FIND_MODEL: Final = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE_MODEL: Final = "1.2.840.10008.5.1.4.1.2.2.2"
GET_MODEL: Final = "1.2.840.10008.5.1.4.1.2.2.3"

MAX_CONTEXTS: Final = 128  # presentation context IDs are the odd numbers 1-255 (PS3.8 9.3.2.2)

Context = tuple[str, tuple[str, ...]]
"""One presentation context: abstract syntax (a SOP class or a model), transfer syntaxes."""

# ---------------------------------------------------------------------- transfer syntaxes
# PS3.5 Annex A / PS3.6 Table A-1; only syntaxes pydicom knows (a unit test checks), so that
# pynetdicom proposes them without a warning and the gateway's imaging layer can name them.
ELE: Final = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
ILE: Final = "1.2.840.10008.1.2"  # Implicit VR Little Endian
DEFLATED: Final = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
EBE: Final = "1.2.840.10008.1.2.2"  # Explicit VR Big Endian (retired, still stored)
ENCAPSULATED_UNCOMPRESSED: Final = "1.2.840.10008.1.2.1.98"
JPEG_BASELINE: Final = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED: Final = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS: Final = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1: Final = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS: Final = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS: Final = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS: Final = "1.2.840.10008.1.2.4.90"
J2K: Final = "1.2.840.10008.1.2.4.91"
J2K_MC_LOSSLESS: Final = "1.2.840.10008.1.2.4.92"
J2K_MC: Final = "1.2.840.10008.1.2.4.93"
HTJ2K_LOSSLESS: Final = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL: Final = "1.2.840.10008.1.2.4.202"
HTJ2K: Final = "1.2.840.10008.1.2.4.203"
RLE: Final = "1.2.840.10008.1.2.5"
VIDEO: Final = (
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
)

# The syntaxes an object may be stored in, most likely first: when a study holds more classes
# than the 128 contexts allow one syntax each, the tail of a class's list shares one context.
NO_PIXELS_SYNTAXES: Final = (ELE, ILE, DEFLATED, EBE)
IMAGE_SYNTAXES: Final = (
    ELE,
    ILE,
    J2K_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_BASELINE,
    JPEG_LS_LOSSLESS,
    RLE,
    J2K,
    JPEG_EXTENDED,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_LOSSLESS,
    DEFLATED,
    EBE,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K,
    ENCAPSULATED_UNCOMPRESSED,
    J2K_MC_LOSSLESS,
    J2K_MC,
)
VIDEO_SYNTAXES: Final = (*VIDEO, *IMAGE_SYNTAXES)

# Kinds of storage SOP class, by UID prefix or UID (PS3.4 Annex B.5): what they may be stored
# in. Conservative: a class with pixel data taken for one without would lose its compressed
# syntaxes, so only families that never carry Pixel Data are listed; the rest are images.
_NO_PIXELS_FAMILIES: Final = (
    "1.2.840.10008.5.1.4.1.1.88.",  # Structured Reports, Key Object Selection, CAD, dose SR
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms (ECG, audio, haemodynamic, ...)
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF, CDA, STL, OBJ, MTL
)
_NO_PIXELS_CLASSES: Final = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
        "1.2.840.10008.5.1.4.1.1.66.1",  # Spatial Registration
        "1.2.840.10008.5.1.4.1.1.66.2",  # Spatial Fiducials
        "1.2.840.10008.5.1.4.1.1.66.3",  # Deformable Spatial Registration
        "1.2.840.10008.5.1.4.1.1.66.5",  # Surface Segmentation
        "1.2.840.10008.5.1.4.1.1.66.6",  # Tractography Results
        "1.2.840.10008.5.1.4.1.1.67",  # Real World Value Mapping
        "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
        "1.2.840.10008.5.1.4.1.1.481.4",  # RT Beams Treatment Record
        "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
        "1.2.840.10008.5.1.4.1.1.481.6",  # RT Brachy Treatment Record
        "1.2.840.10008.5.1.4.1.1.481.7",  # RT Treatment Summary Record
        "1.2.840.10008.5.1.4.1.1.481.8",  # RT Ion Plan
        "1.2.840.10008.5.1.4.1.1.481.9",  # RT Ion Beams Treatment Record
    }
)
_VIDEO_CLASSES: Final = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic Image
        "1.2.840.10008.5.1.4.1.1.77.1.2.1",  # Video Microscopic Image
        "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic Image
    }
)

# Every syntax the storage SCP accepts, in its order of preference: pynetdicom accepts the
# first of these that the requestor's context lists, so in a context offering the stored
# (compressed) syntax and uncompressed fallbacks, the stored one wins.
_NATIVE: Final = (ELE, ILE, DEFLATED, EBE)
ACCEPTED_SYNTAXES: Final = (*(s for s in VIDEO_SYNTAXES if s not in _NATIVE), *_NATIVE)

# Proposed when the PACS cannot say what the retrieved objects are (no SOP Classes in Study,
# no SOP Class UID at IMAGE level: dcmqrscp): the classes an imaging exchange meets
# (61 classes, 2 contexts each + 3 models = 125).
FALLBACK_CLASSES: Final[tuple[str, ...]] = tuple(
    str(getattr(_sop_class, name))
    for name in (
        "ComputedRadiographyImageStorage",
        "DigitalXRayImageStorageForPresentation",
        "DigitalXRayImageStorageForProcessing",
        "DigitalMammographyXRayImageStorageForPresentation",
        "DigitalMammographyXRayImageStorageForProcessing",
        "DigitalIntraOralXRayImageStorageForPresentation",
        "CTImageStorage",
        "EnhancedCTImageStorage",
        "LegacyConvertedEnhancedCTImageStorage",
        "UltrasoundMultiFrameImageStorage",
        "UltrasoundImageStorage",
        "EnhancedUSVolumeStorage",
        "MRImageStorage",
        "EnhancedMRImageStorage",
        "EnhancedMRColorImageStorage",
        "MRSpectroscopyStorage",
        "LegacyConvertedEnhancedMRImageStorage",
        "SecondaryCaptureImageStorage",
        "MultiFrameSingleBitSecondaryCaptureImageStorage",
        "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
        "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
        "MultiFrameTrueColorSecondaryCaptureImageStorage",
        "XRayAngiographicImageStorage",
        "EnhancedXAImageStorage",
        "XRayRadiofluoroscopicImageStorage",
        "EnhancedXRFImageStorage",
        "XRay3DAngiographicImageStorage",
        "BreastTomosynthesisImageStorage",
        "NuclearMedicineImageStorage",
        "PositronEmissionTomographyImageStorage",
        "EnhancedPETImageStorage",
        "LegacyConvertedEnhancedPETImageStorage",
        "RTImageStorage",
        "RTDoseStorage",
        "RTStructureSetStorage",
        "RTPlanStorage",
        "RTIonPlanStorage",
        "RTBeamsTreatmentRecordStorage",
        "VLEndoscopicImageStorage",
        "VLMicroscopicImageStorage",
        "VLSlideCoordinatesMicroscopicImageStorage",
        "VLPhotographicImageStorage",
        "VLWholeSlideMicroscopyImageStorage",
        "OphthalmicPhotography8BitImageStorage",
        "OphthalmicPhotography16BitImageStorage",
        "OphthalmicTomographyImageStorage",
        "VideoEndoscopicImageStorage",
        "VideoPhotographicImageStorage",
        "EncapsulatedPDFStorage",
        "BasicTextSRStorage",
        "EnhancedSRStorage",
        "ComprehensiveSRStorage",
        "Comprehensive3DSRStorage",
        "KeyObjectSelectionDocumentStorage",
        "XRayRadiationDoseSRStorage",
        "GrayscaleSoftcopyPresentationStateStorage",
        "ColorSoftcopyPresentationStateStorage",
        "SegmentationStorage",
        "SpatialRegistrationStorage",
        "ParametricMapStorage",
        "RawDataStorage",
    )
)

# Every storage class pynetdicom names (PS3.4 B.5): what the storage SCP accepts from the start.
KNOWN_STORAGE_CLASSES: Final[tuple[str, ...]] = tuple(
    dict.fromkeys(
        (*FALLBACK_CLASSES, *(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts))
    )
)


def candidate_syntaxes(sop_class: str) -> tuple[str, ...]:
    """The transfer syntaxes an instance of ``sop_class`` may be stored in, likeliest first.

    Any class not known to carry no pixel data (a private one, say) is taken for an image.
    """
    if sop_class in _VIDEO_CLASSES:
        return VIDEO_SYNTAXES
    if sop_class in _NO_PIXELS_CLASSES or sop_class.startswith(_NO_PIXELS_FAMILIES):
        return NO_PIXELS_SYNTAXES
    return IMAGE_SYNTAXES


# ---------------------------------------------------------------------- what the PACS said


@dataclass(frozen=True, slots=True)
class Holdings:
    """What the objects to retrieve are, as far as the PACS said.

    ``classes``: their SOP classes, as first seen. ``syntaxes``: per class, the stored
    transfer syntaxes the PACS named (Available Transfer Syntax UID, (0008,3002)); a class in
    ``unnamed`` has instances whose syntax it did not name.
    """

    classes: tuple[str, ...]
    syntaxes: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    unnamed: frozenset[str] = frozenset()


def study_classes_query(study: str) -> Dataset:
    """STUDY-level C-FIND identifier asking SOP Classes in Study (0008,0062): one answer
    for the whole study (Study Root, PS3.4 C.6.2.1; optional key, Orthanc returns it)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    identifier.SOPClassesInStudy = None
    return identifier


def instance_classes_query(study: str, series: str | None, instance: str | None) -> Dataset:
    """IMAGE-level C-FIND identifier asking each instance's SOP Class UID and, where the
    PACS returns it (Orthanc 1.10 does not), its Available Transfer Syntax UID (0008,3002)
    (Study Root keys, PS3.4 C.6.2.1); the unique keys above, universal if not given (a
    hierarchical SCP needs them present)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = series
    identifier.SOPInstanceUID = instance
    identifier.SOPClassUID = None
    identifier.AvailableTransferSyntaxUID = None
    return identifier


def holdings_from_study(answers: Sequence[Dataset]) -> Holdings | None:
    """The classes of a STUDY-level answer; None if the PACS did not return them."""
    if len(answers) != 1:
        return None
    classes = _uids(answers[0].get("SOPClassesInStudy"))
    return Holdings(classes) if classes else None


def holdings_from_instances(answers: Iterable[Dataset]) -> Holdings | None:
    """Classes and stored syntaxes from IMAGE-level answers; None if the PACS returned no
    answer, or one without its SOP Class UID (it does not say, e.g. dcmqrscp)."""
    classes: dict[str, None] = {}
    syntaxes: dict[str, set[str]] = {}
    unnamed: set[str] = set()
    for answer in answers:
        sop_class = _uids(answer.get("SOPClassUID"))
        if not sop_class:
            return None
        classes[sop_class[0]] = None
        named = _uids(answer.get("AvailableTransferSyntaxUID"))
        if named:
            syntaxes.setdefault(sop_class[0], set()).update(named)
        else:
            unnamed.add(sop_class[0])
    if not classes:
        return None
    return Holdings(
        tuple(classes),
        MappingProxyType({c: frozenset(s) for c, s in syntaxes.items()}),
        frozenset(unnamed),
    )


def _uids(value: object) -> tuple[str, ...]:
    """A UI value as the UIDs it holds (pydicom gives one str, a MultiValue, or None)."""
    if value is None:
        return ()
    items: Iterable[object] = (
        [value] if isinstance(value, str) or not isinstance(value, Iterable) else value
    )
    return tuple(str(v).strip() for v in items if v and str(v).strip())


# ---------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class ContextPlan:
    """The presentation contexts of one association, in proposal order, and the storage
    classes it takes the SCP role for (PS3.7 D.3.3.4). ``left_out``: classes that did not fit.
    """

    contexts: tuple[Context, ...]
    roles: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()

    def covers(self, other: ContextPlan) -> bool:
        """Whether an association opened for this plan serves ``other`` as well."""
        return set(other.contexts) <= set(self.contexts) and set(other.roles) <= set(self.roles)

    def merged(self, other: ContextPlan) -> ContextPlan | None:
        """One plan serving both, if it fits in the 128 contexts; else None."""
        mine = set(self.contexts)
        extra = tuple(c for c in other.contexts if c not in mine)
        if len(self.contexts) + len(extra) > MAX_CONTEXTS:
            return None
        roles = self.roles + tuple(r for r in other.roles if r not in self.roles)
        return ContextPlan(self.contexts + extra, roles)


def query_plan(retrieve: str) -> ContextPlan:
    """The contexts every association of a site has: C-ECHO, C-FIND, and C-GET or C-MOVE."""
    model = GET_MODEL if retrieve == "c-get" else MOVE_MODEL
    return ContextPlan(tuple((m, (ELE, ILE)) for m in (VERIFICATION, FIND_MODEL, model)))


def plan_retrieve(held: Holdings | None, base: ContextPlan) -> ContextPlan:
    """The contexts to retrieve objects of ``held`` with, after those of ``base``.

    Per SOP class, its candidate syntaxes (those the PACS named first) each get a context of
    their own, so whatever an instance is stored in has a context accepted in exactly that
    syntax and nothing needs transcoding (PS3.4 C.4.3; the acceptor picks one syntax per
    context, PS3.8 9.3.3.2). Within the 128 contexts (PS3.8 9.3.2.2) every class gets one
    context, then one more each in turn; a class's candidates without a context of their own
    share its last one. The gateway is SCP for each class (PS3.7 D.3.3.4). Unknown holdings:
    the fixed :data:`FALLBACK_CLASSES`.
    """
    classes = held.classes if held is not None and held.classes else FALLBACK_CLASSES
    budget = MAX_CONTEXTS - len(base.contexts)
    kept, left_out = classes[:budget], classes[budget:]
    candidates = [_candidates(c, held) for c in kept]
    shares = _shares([len(c) for c in candidates], budget)
    contexts = tuple(
        context
        for sop_class, syntaxes, share in zip(kept, candidates, shares, strict=True)
        for context in _split(sop_class, syntaxes, share)
    )
    return ContextPlan(base.contexts + contexts, base.roles + kept, left_out)


def _candidates(sop_class: str, held: Holdings | None) -> tuple[str, ...]:
    table = candidate_syntaxes(sop_class)
    named = held.syntaxes.get(sop_class, frozenset()) if held is not None else frozenset()
    if not named:
        return table
    rank = {s: i for i, s in enumerate(table)}
    first = tuple(sorted(named, key=lambda s: (rank.get(s, len(rank)), s)))
    if held is not None and sop_class in held.unnamed:  # some instances unnamed: all of them
        return first + tuple(s for s in table if s not in named)
    # The PACS named them all: Explicit VR Little Endian only as a last resort (a PACS that
    # cannot send a syntax it claimed may still convert to it).
    return first if ELE in named else (*first, ELE)


def _shares(wants: Sequence[int], budget: int) -> list[int]:
    """Contexts per class: one each, then one more each in turn while the budget lasts."""
    shares = [1] * len(wants)
    left = budget - len(wants)
    while left > 0 and any(s < w for s, w in zip(shares, wants, strict=True)):
        for i, want in enumerate(wants):
            if left > 0 and shares[i] < want:
                shares[i] += 1
                left -= 1
    return shares


def _split(sop_class: str, syntaxes: tuple[str, ...], share: int) -> list[Context]:
    """``share`` contexts: the first syntaxes one each, the rest together in the last."""
    alone = [(sop_class, (s,)) for s in syntaxes[: share - 1]]
    return [*alone, (sop_class, syntaxes[share - 1 :])]
