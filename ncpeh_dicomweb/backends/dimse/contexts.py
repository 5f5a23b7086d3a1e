"""Presentation contexts the gateway proposes: tables, not branches.

One association kind serves every operation: the three Study Root models plus, for C-GET, the
storage SOP classes with the SCP role (PS3.4 C.4.3, PS3.7 D.3.3.4). Each storage class is
proposed twice, once with the uncompressed transfer syntaxes and once with the compressed ones,
so the PACS can send an instance as it is stored instead of transcoding it (at most 128
contexts per association, PS3.8 9.3.2.2).
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import sop_class

__all__ = [
    "COMPRESSED",
    "FIND_MODEL",
    "GET_MODEL",
    "MOVE_MODEL",
    "STORAGE_CLASSES",
    "UNCOMPRESSED",
    "VERIFICATION",
]

VERIFICATION = "1.2.840.10008.1.1"  # C-ECHO (PS3.4 A.4)
# Study Root Query/Retrieve Information Model (PS3.4 C.6.2)
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
COMPRESSED = (
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

# The storage SOP classes an imaging exchange meets (61 classes x 2 contexts + 3 models = 125).
STORAGE_CLASSES: tuple[str, ...] = tuple(
    str(getattr(sop_class, name))
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
