"""Body Part Examined (0018,0015) → SNOMED CT: the body site of an ImagingStudy series.

Source: DICOM PS3.16 Annex L "Correspondence of Anatomic Region Codes and Body Part Examined
Defined Terms" (Table L-1), which pairs each Defined Term of Body Part Examined (PS3.3
C.7.3.1.1) with a code of CID 4031 "Common Anatomic Regions" (or of CID 4030 / CID 4 for
organs). FHIR R4 ImagingStudy.series.bodySite and R5 ``bodySite`` (a CodeableReference) carry
it as a SNOMED CT ``Coding`` (system ``http://snomed.info/sct``); the ``bodysite`` search
parameter (R5 ``body-site``) matches it.

A representative subset of the table, not all of it: the regions and organs a cross-border
imaging exchange meets. Each code and display is the one of the current edition (SNOMED CT
codes of the 2019 and later editions, e.g. Chest 816094009, Abdomen 818981001, not the older
51185008 / 113345001) and is checked against pydicom's copy of the DICOM code tables by
``tests/unit/test_fhir_search.py``. Terms whose code the tables leave ambiguous (HIP: Hip
29836001 or Hip joint 24136001; ARM: Upper arm or Upper limb) are left out until checked
against Table L-1 itself: better no body site than a wrong one.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["BODY_PART_SNOMED"]

BODY_PART_SNOMED: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        # Body Part Examined Defined Term → (SNOMED CT code, display), PS3.16 Table L-1.
        "ABDOMEN": ("818981001", "Abdomen"),
        "ABDOMENPELVIS": ("818982008", "Abdomen and Pelvis"),
        "ADRENAL": ("23451007", "Adrenal gland"),
        "ANKLE": ("70258002", "Ankle joint"),
        "AORTA": ("15825003", "Aorta"),
        "AXILLA": ("91470000", "Axilla"),
        "BACK": ("77568009", "Back"),
        "BLADDER": ("89837001", "Bladder"),
        "BRAIN": ("12738006", "Brain"),
        "BREAST": ("76752008", "Breast"),
        "BRONCHUS": ("955009", "Bronchus"),
        "CALCANEUS": ("80144004", "Calcaneus"),
        "CAROTID": ("69105007", "Carotid Artery"),
        "CHEST": ("816094009", "Chest"),
        "CHESTABDOMEN": ("416550000", "Chest and Abdomen"),
        "CHESTABDPELVIS": ("416775004", "Chest, Abdomen and Pelvis"),
        "CLAVICLE": ("51299004", "Clavicle"),
        "COCCYX": ("64688005", "Coccyx"),
        "COLON": ("71854001", "Colon"),
        "CSPINE": ("122494005", "Cervical spine"),
        "CTSPINE": ("1217257000", "Cervico-thoracic spine"),
        "DUODENUM": ("38848004", "Duodenum"),
        "ELBOW": ("16953009", "Elbow joint"),
        "ESOPHAGUS": ("32849002", "Esophagus"),
        "EXTREMITY": ("66019005", "Extremity"),
        "EYE": ("81745001", "Eye"),
        "FEMUR": ("71341001", "Femur"),
        "FINGER": ("7569003", "Finger"),
        "FOOT": ("56459004", "Foot"),
        "GALLBLADDER": ("28231008", "Gallbladder"),
        "HAND": ("85562004", "Hand"),
        "HEAD": ("69536005", "Head"),
        "HEADNECK": ("774007", "Head and Neck"),
        "HEART": ("80891009", "Heart"),
        "HUMERUS": ("85050009", "Humerus"),
        "IAC": ("361078006", "Internal Auditory Canal"),
        "JAW": ("661005", "Jaw region"),
        "KIDNEY": ("64033007", "Kidney"),
        "KNEE": ("72696002", "Knee"),
        "LARYNX": ("4596009", "Larynx"),
        "LEG": ("30021000", "Lower leg"),
        "LIVER": ("10200004", "Liver"),
        "LSPINE": ("122496007", "Lumbar spine"),
        "LSSPINE": ("1217253001", "Lumbo-sacral spine"),
        "LUNG": ("39607008", "Lung"),
        "MANDIBLE": ("91609006", "Mandible"),
        "MAXILLA": ("70925003", "Maxilla"),
        "MEDIASTINUM": ("72410000", "Mediastinum"),
        "NECK": ("45048000", "Neck"),
        "NECKCHEST": ("417437006", "Neck and Chest"),
        "NECKCHESTABDOMEN": ("416152001", "Neck, Chest and Abdomen"),
        "NECKCHESTABDPELVIS": ("416319003", "Neck, Chest, Abdomen and Pelvis"),
        "ORBIT": ("363654007", "Orbital structure"),
        "PANCREAS": ("15776009", "Pancreas"),
        "PAROTID": ("45289007", "Parotid gland"),
        "PATELLA": ("64234005", "Patella"),
        "PELVIS": ("816092008", "Pelvis"),
        "PROSTATE": ("41216001", "Prostate"),
        "RECTUM": ("34402009", "Rectum"),
        "RIB": ("113197003", "Rib"),
        "SCAPULA": ("79601000", "Scapula"),
        "SHOULDER": ("16982005", "Shoulder"),
        "SKULL": ("89546000", "Skull"),
        "SPINE": ("421060004", "Spine"),
        "SPLEEN": ("78961009", "Spleen"),
        "STERNUM": ("56873002", "Sternum"),
        "STOMACH": ("69695003", "Stomach"),
        "SUBMANDIBULAR": ("54019009", "Submandibular gland"),
        "THIGH": ("68367000", "Thigh"),
        "THUMB": ("76505004", "Thumb"),
        "THYROID": ("69748006", "Thyroid"),
        "TLSPINE": ("1217256009", "Thoraco-lumbar spine"),
        "TMJ": ("53620006", "Temporomandibular joint"),
        "TOE": ("29707007", "Toe"),
        "TRACHEA": ("44567001", "Trachea"),
        "TSPINE": ("122495006", "Thoracic spine"),
        "URETER": ("87953007", "Ureter"),
        "URETHRA": ("13648007", "Urethra"),
        "UTERUS": ("35039007", "Uterus"),
        "WHOLEBODY": ("38266002", "Entire body"),
        "WRIST": ("74670003", "Wrist joint"),
        "ZYGOMA": ("13881006", "Zygoma"),
    }
)
