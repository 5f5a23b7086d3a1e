#!/usr/bin/env python3
"""Load realistic synthetic DICOM studies into a real Orthanc for tests and benchmarks.

Sets (``--set``, repeatable):

* ``core``      6 patients, 14 studies (CT, MR, CR), 29 series, 277 instances, about 9.9 MB:
                realistic names (one UTF-8 ``ISO_IR 192``, one Latin-1 ``ISO_IR 100``, one
                without SpecificCharacterSet), dates 2023-2025, procedure (LOINC) and reason
                (SNOMED CT) codes, geometry, windowing, small 16-bit phantom images; two
                studies also hold a Key Object Selection document (key images, a KO series
                of its own; the manifest's ``kos`` lists them).
* ``large``     one CT study of patient ``LARGE-CT-1``: 4 series, 500 slices of 512x512x16 bit,
                about 263 MB (``--large-instances``, ``--large-series``, ``--large-matrix``).
* ``xl``        one CT study of patient ``XL-CT-1`` shaped like ``large``, for benchmarks: 1000
                slices, about 526 MB (``--xl-instances 2000``: 1.05 GB); its own seed, and one
                study per size (accession ``XL-{instances}x{matrix}``), so sizes coexist.
* ``testdata``  every parseable file of pydicom's bundled ``data/test_files`` that has a
                SOPInstanceUID and a StudyInstanceUID (read from disk; never downloads).

Everything is deterministic: UIDs come from ``pydicom.uid.generate_uid(entropy_srcs=[seed, ...])``,
so the same set always has the same Study/Series/SOP Instance UIDs. Instances are generated one
by one in worker threads and POSTed to Orthanc's REST API (``POST /instances``); nothing is
built up in memory first. The manifest (``--manifest``, merged if it exists) lists per set the
studies, series and SOP Instance UIDs (see ``scripts/README.md``).

Examples
  python scripts/sample_data.py --orthanc http://127.0.0.1:8042 --set core --manifest m.json
  python scripts/sample_data.py --orthanc "$ORTHANC_URL" --set large --set testdata \\
      --manifest "$ORTHANC_DIR/manifest.json"
  python scripts/sample_data.py --out /tmp/dcm --set core      # files only, no Orthanc

Exit status: 0 ok; 1 an upload of ``core``/``large`` failed (or nothing of ``testdata`` was
accepted); 2 usage error or Orthanc unreachable. Messages go to stderr only.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import io
import json
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pydicom
import pydicom.data
import requests
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
KOS_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage
SOP_CLASS = {
    "CT": CT_IMAGE_STORAGE,
    "MR": MR_IMAGE_STORAGE,
    "CR": CR_IMAGE_STORAGE,
    "KO": KOS_STORAGE,
}

CORE_SEED = "ncpeh-dicomweb-core-v1"
LARGE_SEED = "ncpeh-dicomweb-large-v1"
XL_SEED = "ncpeh-dicomweb-xl-v1"
PROG = "sample_data"

Json = dict[str, Any]
T = TypeVar("T")
R = TypeVar("R")


def log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def uid(seed: str, *parts: object) -> str:
    """Deterministic UID under pydicom's root, derived from the seed and the parts."""
    return generate_uid(entropy_srcs=[seed, *map(str, parts)])


def ds_str(value: float) -> str:
    """Format a number as a DS value (at most 16 characters, no '-0')."""
    text = f"{value:.6g}"
    return "0" if text == "-0" else text


# --------------------------------------------------------------------------- phantoms
@dataclass(frozen=True)
class Ellipse:
    """A filled ellipse of one tissue, in normalised image coordinates (-1..1).

    ``zr``/``zc``: half extent and centre along the slice axis (t in -1..1); ``None`` means
    the ellipse is the same on every slice (a cylinder).
    """

    tissue: str
    cx: float
    cy: float
    ax: float
    ay: float
    zr: float | None = None
    zc: float = 0.0


E = Ellipse
# Painted in order (later ellipses overwrite earlier ones). Axial: x = patient left (image
# right), y = posterior (image bottom). Sagittal: x = posterior, y = feet. Coronal and
# projections: x = patient left, y = feet.
PHANTOMS: dict[str, tuple[Ellipse, ...]] = {
    "chest": (
        E("fat", 0, 0, 0.92, 0.66),
        E("muscle", 0, 0, 0.88, 0.62),
        E("lung", -0.42, -0.02, 0.32, 0.46, 1.5),
        E("lung", 0.42, -0.02, 0.32, 0.46, 1.5),
        E("blood", 0.12, -0.02, 0.24, 0.22, 0.8, -0.3),
        E("blood", -0.06, 0.3, 0.07, 0.07),
        E("bone", 0, -0.6, 0.1, 0.04),
        E("bone", 0, 0.48, 0.1, 0.1),
        E("marrow", 0, 0.48, 0.07, 0.07),
    ),
    "abdomen": (
        E("fat", 0, 0, 0.92, 0.72),
        E("muscle", 0, 0.02, 0.86, 0.66),
        E("soft", 0, -0.05, 0.78, 0.55),
        E("liver", -0.38, -0.08, 0.38, 0.32, 1.3, 0.4),
        E("soft", 0.35, -0.15, 0.2, 0.15, 0.6, 0.5),
        E("kidney", -0.38, 0.32, 0.11, 0.16, 0.55, -0.1),
        E("kidney", 0.38, 0.32, 0.11, 0.16, 0.55, 0.0),
        E("blood", -0.05, 0.3, 0.06, 0.06),
        E("bone", 0, 0.5, 0.11, 0.11),
        E("marrow", 0, 0.5, 0.08, 0.08),
    ),
    "head": (
        E("fat", 0, 0, 0.76, 0.94, 1.3),
        E("bone", 0, 0, 0.72, 0.9, 1.22),
        E("csf", 0, 0, 0.67, 0.85, 1.15),
        E("brain", 0, 0, 0.65, 0.83, 1.12),
        E("csf", -0.1, -0.08, 0.06, 0.24, 0.45, 0.1),
        E("csf", 0.1, -0.08, 0.06, 0.24, 0.45, 0.1),
        E("csf", 0, 0.05, 0.03, 0.03, 0.3, -0.2),
    ),
    "head_sag": (
        E("fat", 0, 0, 0.94, 0.82, 1.3),
        E("bone", 0, -0.05, 0.9, 0.74, 1.22),
        E("brain", 0, -0.08, 0.85, 0.65, 1.12),
        E("brain", 0.35, 0.45, 0.3, 0.2, 0.9),
        E("csf", -0.05, -0.12, 0.3, 0.08, 0.35),
        E("brain", 0.05, 0.5, 0.09, 0.35, 0.25),
    ),
    "spine_sag": (
        E("fat", 0, 0, 0.95, 1.2, 1.5),
        E("muscle", 0.2, 0, 0.7, 1.2, 1.3),
        *(E("marrow", 0.05, -0.8 + 0.4 * k, 0.2, 0.16, 0.6) for k in range(5)),
        *(E("disc", 0.05, -0.6 + 0.4 * k, 0.19, 0.035, 0.55) for k in range(4)),
        E("csf", 0.34, 0, 0.07, 1.2, 0.3),
        E("brain", 0.34, -0.5, 0.035, 0.7, 0.2),
    ),
    "spine_ax": (
        E("fat", 0, 0, 0.9, 0.72),
        E("muscle", 0, 0.05, 0.82, 0.62),
        E("soft", 0, -0.3, 0.7, 0.3),
        E("disc", 0, 0.05, 0.22, 0.18, 1.4, -0.5),
        E("marrow", 0, 0.05, 0.2, 0.16, 1.2, 0.4),
        E("bone", 0, 0.4, 0.12, 0.1),
        E("csf", 0, 0.34, 0.09, 0.07),
        E("muscle", -0.28, 0.55, 0.16, 0.12),
        E("muscle", 0.28, 0.55, 0.16, 0.12),
    ),
    "knee_sag": (
        E("fat", 0, 0, 0.62, 1.2, 1.4),
        E("muscle", 0.1, 0, 0.5, 1.2, 1.2),
        E("bone", 0, -0.5, 0.33, 0.55, 1.1),
        E("marrow", 0, -0.5, 0.29, 0.51, 1.05),
        E("cartilage", 0, -0.02, 0.3, 0.04, 1.0),
        E("fluid", -0.2, -0.15, 0.06, 0.2, 0.6),
        E("bone", 0, 0.52, 0.3, 0.5, 1.1),
        E("marrow", 0, 0.52, 0.26, 0.46, 1.05),
        E("bone", -0.45, -0.18, 0.08, 0.16, 0.6),
    ),
    "knee_cor": (
        E("fat", 0, 0, 0.72, 1.2, 1.4),
        E("muscle", 0, 0, 0.62, 1.2, 1.2),
        E("bone", 0, -0.6, 0.3, 0.6, 1.1),
        E("bone", -0.2, -0.12, 0.2, 0.14, 1.0),
        E("bone", 0.2, -0.12, 0.2, 0.14, 1.0),
        E("marrow", 0, -0.6, 0.26, 0.56, 1.05),
        E("cartilage", 0, 0.02, 0.42, 0.04, 1.0),
        E("bone", 0, 0.5, 0.42, 0.46, 1.1),
        E("marrow", 0, 0.5, 0.38, 0.42, 1.05),
    ),
    "knee_ax": (
        E("fat", 0, 0, 0.8, 0.75),
        E("muscle", 0, 0.05, 0.7, 0.62),
        E("bone", 0, 0.05, 0.5, 0.36, 1.3, 0.3),
        E("marrow", 0, 0.05, 0.46, 0.32, 1.25, 0.3),
        E("cartilage", 0, -0.3, 0.2, 0.05, 0.8, 0.5),
        E("bone", 0, -0.48, 0.22, 0.1, 0.6, 0.6),
        E("fluid", 0.3, -0.35, 0.1, 0.05, 0.5, 0.4),
    ),
    "chest_xr": (
        E("soft", 0, 0.05, 0.86, 0.98),
        E("lung", -0.38, -0.05, 0.3, 0.62),
        E("lung", 0.38, -0.05, 0.3, 0.62),
        E("muscle", 0.12, 0.3, 0.26, 0.24),
        E("bone", 0, 0, 0.05, 0.98),
        E("bone", -0.36, -0.72, 0.33, 0.04),
        E("bone", 0.36, -0.72, 0.33, 0.04),
    ),
    "hand_xr": (
        E("soft", 0, 0.85, 0.32, 0.3),
        E("soft", 0, 0.25, 0.4, 0.38),
        *(E("soft", x, -0.42, 0.075, 0.38) for x in (-0.3, -0.1, 0.1, 0.3)),
        E("soft", 0.5, 0.02, 0.08, 0.28),
        *(E("bone", x, -0.42, 0.035, 0.34) for x in (-0.3, -0.1, 0.1, 0.3)),
        *(E("bone", x, 0.18, 0.035, 0.2) for x in (-0.3, -0.1, 0.1, 0.3)),
        E("bone", 0.5, 0.02, 0.035, 0.24),
        E("bone", 0, 0.55, 0.26, 0.1),
        E("bone", -0.12, 0.88, 0.06, 0.2),
        E("bone", 0.14, 0.88, 0.05, 0.2),
    ),
    "shoulder_xr": (
        E("soft", 0, 0.1, 0.95, 0.95),
        E("lung", 0.62, 0.35, 0.34, 0.62),
        E("bone", 0.25, 0.15, 0.22, 0.45),
        E("bone", -0.2, 0.55, 0.1, 0.6),
        E("bone", -0.12, -0.08, 0.22, 0.22),
        E("bone", 0.15, -0.55, 0.58, 0.05),
    ),
}

TISSUES_CT = {
    "air": -1000, "fat": -100, "soft": 40, "muscle": 50, "lung": -850, "bone": 900,
    "marrow": 250, "blood": 180, "liver": 60, "kidney": 160, "brain": 35, "csf": 5,
    "fluid": 10, "cartilage": 110, "disc": 80,
}  # fmt: skip
TISSUES_T1 = {
    "air": 0, "fat": 1100, "soft": 480, "muscle": 420, "lung": 20, "bone": 60, "marrow": 950,
    "blood": 120, "liver": 600, "kidney": 500, "brain": 720, "csf": 160, "fluid": 140,
    "cartilage": 520, "disc": 420,
}  # fmt: skip
TISSUES_T2 = {
    "air": 0, "fat": 780, "soft": 520, "muscle": 300, "lung": 20, "bone": 50, "marrow": 620,
    "blood": 100, "liver": 380, "kidney": 900, "brain": 600, "csf": 1800, "fluid": 1750,
    "cartilage": 760, "disc": 1250,
}  # fmt: skip
TISSUES_XR = {
    "air": 80, "fat": 1400, "soft": 1700, "muscle": 1850, "lung": 500, "bone": 3300,
    "marrow": 2900, "blood": 1800, "liver": 1850, "kidney": 1850, "brain": 1700, "csf": 1650,
    "fluid": 1650, "cartilage": 1800, "disc": 1900,
}  # fmt: skip
TISSUES: dict[str, dict[str, int]] = {
    "ct": TISSUES_CT,
    "t1": TISSUES_T1,
    "t2": TISSUES_T2,
    "flair": {**TISSUES_T2, "csf": 90, "fluid": 120, "brain": 700},
    "pdfs": {**TISSUES_T2, "fat": 160, "marrow": 220, "cartilage": 900, "muscle": 480},
    "xr": TISSUES_XR,
}
# stored value = tissue value + offset (CT: HU + 1024 with RescaleIntercept -1024)
STORED_OFFSET = {"ct": 1024}


@lru_cache(maxsize=8)
def _coords(n: int) -> npt.NDArray[np.float32]:
    """Pixel centres in normalised coordinates (-1..1)."""
    return ((np.arange(n, dtype=np.float32) * 2 + 1) / n - 1).astype(np.float32)


@lru_cache(maxsize=8)
def _texture_base(n: int) -> npt.NDArray[np.int32]:
    idx = np.arange(n, dtype=np.int32)
    return idx[None, :] * 7 + idx[:, None] * 13


def render(kind: str, contrast: str, n: int, t: float, salt: int) -> npt.NDArray[np.uint16]:
    """One n x n slice of phantom ``kind`` at slice position t (-1..1), 12-bit unsigned.

    Cheap: each ellipse is only evaluated inside its bounding box. A small deterministic
    texture (0..16, depending on ``salt``) makes every slice differ byte-wise.
    """
    values = TISSUES[contrast]
    offset = STORED_OFFSET.get(contrast, 0)
    coords = _coords(n)
    img = np.full((n, n), values["air"] + offset, dtype=np.int32)
    for e in PHANTOMS[kind]:
        scale = 1.0
        if e.zr is not None:
            d = (t - e.zc) / e.zr
            if abs(d) >= 1.0:
                continue
            scale = math.sqrt(1.0 - d * d)
        ax, ay = e.ax * scale, e.ay * scale
        c0 = max(0, math.floor((e.cx - ax + 1) * n / 2))
        c1 = min(n, math.ceil((e.cx + ax + 1) * n / 2) + 1)
        r0 = max(0, math.floor((e.cy - ay + 1) * n / 2))
        r1 = min(n, math.ceil((e.cy + ay + 1) * n / 2) + 1)
        if c0 >= c1 or r0 >= r1 or ax <= 0 or ay <= 0:
            continue
        xs = (coords[c0:c1] - e.cx) / ax
        ys = (coords[r0:r1] - e.cy) / ay
        mask = xs[None, :] ** 2 + ys[:, None] ** 2 <= 1.0
        img[r0:r1, c0:c1][mask] = values[e.tissue] + offset
    img += (_texture_base(n) + salt) % 17
    np.clip(img, 0, 4095, out=img)
    return img.astype(np.uint16)


# --------------------------------------------------------------------------- study specs
@dataclass(frozen=True)
class Code:
    value: str
    scheme: str
    meaning: str

    def item(self) -> Dataset:
        ds = Dataset()
        ds.CodeValue = self.value
        ds.CodingSchemeDesignator = self.scheme
        ds.CodeMeaning = self.meaning
        return ds


# Procedure codes: LOINC ("LN"); reasons: SNOMED CT ("SCT"). Code values and meanings as in
# pydicom's DICOM code dictionaries (pydicom.sr).
LN_CT_CHEST = Code("24627-2", "LN", "CT Chest")
LN_CT_ABDOMEN = Code("41806-1", "LN", "CT Abdomen")
LN_CT_HEAD = Code("24725-4", "LN", "CT Head")
LN_CT_UNSPEC = Code("25045-6", "LN", "CT unspecified body region")
LN_MR_HEAD = Code("24590-2", "LN", "MRI Head")
LN_MR_SPINE = Code("18756-7", "LN", "MRI Spine")
LN_MR_UNSPEC = Code("25056-3", "LN", "MRI unspecified body region")
LN_XR_UNSPEC = Code("43468-8", "LN", "XR unspecified body region")
SCT_COUGH = Code("49727002", "SCT", "Cough")
SCT_DYSPNEA = Code("267036007", "SCT", "Dyspnea")
SCT_HEADACHE = Code("25064002", "SCT", "Headache")
SCT_TRAUMA = Code("417746004", "SCT", "Trauma")
SCT_DIZZINESS = Code("404640003", "SCT", "Dizziness")
SCT_FEVER = Code("386661006", "SCT", "Fever")
SCT_NEOPLASM = Code("108369006", "SCT", "Neoplasm")
SCT_KIDNEY_DISEASE = Code("90708001", "SCT", "Kidney disease")
SCT_LUNG_CANCER = Code("93880001", "SCT", "Lung cancer")
SCT_CHEST_PAIN = Code("29857009", "SCT", "Chest Pain")
# Key Object Selection (PS3.16): document title (CID 7010) and the description's concept.
DCM_OF_INTEREST = Code("113000", "DCM", "Of Interest")
DCM_KEY_OBJECT_DESCRIPTION = Code("113012", "DCM", "Key Object Description")


@dataclass(frozen=True)
class Patient:
    id: str
    name: str
    issuer: str
    birth_date: str
    sex: str
    charset: str | None  # None: no SpecificCharacterSet (default repertoire, ASCII only)
    institution: str


@dataclass(frozen=True)
class Series:
    modality: str
    description: str
    count: int
    kind: str  # phantom
    contrast: str  # tissue table
    body_part: str
    orientation: str = "AX"  # AX | SAG | COR | PROJ
    thickness: float = 5.0
    fov: float = 400.0  # mm
    matrix: int = 128
    window: tuple[float, float] = (40.0, 400.0)
    laterality: str | None = None
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    protocol: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # extra DICOM keywords


@dataclass(frozen=True)
class KeyObjects:
    """A Key Object Selection document (PS3.3 A.35.4, TID 2010) in a series of its own.

    ``references``: the selected images, in document order, as (series index, instance
    index) of the study's image series, with the frame numbers to name (empty: no
    ReferencedFrameNumber). ``minutes``: created this long after the study started.
    """

    title: Code
    description: str | None  # the Key Object Description TEXT item; None: no such item
    references: tuple[tuple[int, int, tuple[int, ...]], ...]
    minutes: int
    timezone: str  # TimezoneOffsetFromUTC of the document, e.g. "+0100"
    series_number: int = 999
    series_description: str = "Key images"


@dataclass(frozen=True)
class Study:
    key: str  # part of the UID seed; unique within a set
    patient: Patient
    when: dt.datetime
    accession: str
    study_id: str
    description: str
    referring: str
    procedure: Code
    reason: Code
    station: str
    series: tuple[Series, ...]
    key_objects: tuple[KeyObjects, ...] = ()  # KOS documents, each in a series of its own


CT_PARAMS: dict[str, Any] = {"KVP": "120", "XRayTubeCurrent": 180, "ConvolutionKernel": "B30f"}
CT_LUNG_PARAMS: dict[str, Any] = {**CT_PARAMS, "ConvolutionKernel": "B70f"}
CT_BONE_PARAMS: dict[str, Any] = {**CT_PARAMS, "ConvolutionKernel": "H70h"}


def mr_params(seq: str, tr: float, te: float, etl: int, field_t: float = 1.5) -> dict[str, Any]:
    p: dict[str, Any] = {
        "ScanningSequence": ["SE"],
        "SequenceVariant": ["SK", "SP"],
        "ScanOptions": "",
        "MRAcquisitionType": "2D",
        "RepetitionTime": ds_str(tr),
        "EchoTime": ds_str(te),
        "EchoTrainLength": etl,
        "MagneticFieldStrength": ds_str(field_t),
        "ImagedNucleus": "1H",
        "ImagingFrequency": ds_str(42.577 * field_t),
    }
    if seq == "T1":
        p["SequenceVariant"] = ["SK"]
    elif seq == "FLAIR":
        p.update(ScanningSequence=["SE", "IR"], SequenceVariant=["SK", "SP", "MP"])
        p["InversionTime"] = "2500"
    elif seq == "PDFS":
        p["ScanOptions"] = "FS"
    return p


def ct_scout(count: int = 1) -> Series:
    return Series(
        "CT",
        "Topogram 0.6 T20f",
        count,
        "chest_xr",
        "xr",
        "CHEST",
        "PROJ",
        0.6,
        500.0,
        window=(1800.0, 3600.0),
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        protocol="Topogram",
        params={**CT_PARAMS, "ConvolutionKernel": "T20f"},
    )


def cr(
    description: str, kind: str, body_part: str, view: str, fov: float, lat: str | None
) -> Series:
    return Series(
        "CR",
        description,
        1,
        kind,
        "xr",
        body_part,
        "PROJ",
        0.0,
        fov,
        256,
        window=(2000.0, 3600.0),
        laterality=lat,
        image_type=("ORIGINAL", "PRIMARY"),
        protocol=description,
        params={"KVP": "110" if body_part == "CHEST" else "55", "ViewPosition": view},
    )


def mr(
    description: str,
    count: int,
    kind: str,
    contrast: str,
    body_part: str,
    orient: str,
    fov: float,
    window: tuple[float, float],
    params: dict[str, Any],
    lat: str | None = None,
    thickness: float = 4.0,
) -> Series:
    return Series(
        "MR",
        description,
        count,
        kind,
        contrast,
        body_part,
        orient,
        thickness,
        fov,
        128,
        window=window,
        laterality=lat,
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        protocol=description,
        params={**params, "SpacingBetweenSlices": ds_str(thickness * 1.1)},
    )


def ct(
    description: str,
    count: int,
    kind: str,
    body_part: str,
    window: tuple[float, float],
    params: dict[str, Any],
    fov: float = 400.0,
    thickness: float = 5.0,
    matrix: int = 128,
) -> Series:
    return Series(
        "CT",
        description,
        count,
        kind,
        "ct",
        body_part,
        "AX",
        thickness,
        fov,
        matrix,
        window=window,
        protocol=description,
        params=params,
    )


W_SOFT = (40.0, 400.0)
W_LUNG = (-600.0, 1500.0)
W_BONE = (500.0, 2000.0)
W_BRAIN = (40.0, 80.0)

P_MUELLER = Patient(
    "DE1000234",
    "Müller^Jürgen",
    "KLINIKUM-NORD-MUC",
    "19610412",
    "M",
    "ISO_IR 192",
    "Klinikum Nord München",
)
P_SMITH = Patient(
    "IE2000517", "Smith^Alice^M", "HSE-DUBLIN", "19850930", "F", None, "St Brigid's Hospital"
)
P_DUBOIS = Patient(
    "FR3000871", "Dubois^Élodie", "CHU-LYON", "19920227", "F", "ISO_IR 100", "CHU Lyon Sud"
)
P_ROSSI = Patient(
    "IT4000112", "Rossi^Marco", "ASL-ROMA1", "19470115", "M", "ISO_IR 192", "Ospedale San Luca"
)
# The Czech patient of the NCPeH "Get Study Metadata (HL7 FHIR)" page's example searches.
P_NOVAK = Patient(
    "456789123",
    "Novák^Jan",
    "CZ-NCPEH",
    "19700305",
    "M",
    "ISO_IR 192",
    "Fakultní nemocnice Brno",
)
P_NOWAK = Patient(
    "PL5000963",
    "Nowak^Łukasz",
    "SZPITAL-KRK",
    "19980703",
    "M",
    "ISO_IR 192",
    "Szpital Miejski Kraków",
)


# fmt: off
def core_studies() -> list[Study]:
    """The ``core`` set: 6 patients, 14 studies, 29 series, 277 instances (2 of them Key
    Object Selection documents, in series of their own)."""
    return [
        Study(
            "mueller-ct-2023", P_MUELLER, dt.datetime(2023, 3, 14, 8, 12, 5), "A23DE0001",
            "CT1001", "CT Thorax nativ", "Groß^Stefan^^Dr.", LN_CT_CHEST, SCT_DYSPNEA, "CT01",
            (
                ct_scout(),
                ct("Thorax 5.0 B30f", 16, "chest", "CHEST", W_SOFT, CT_PARAMS),
                ct("Lunge 1.0 B70f", 16, "chest", "CHEST", W_LUNG, CT_LUNG_PARAMS, thickness=1.0),
            ),
        ),
        Study(
            "mueller-cr-2024", P_MUELLER, dt.datetime(2024, 6, 2, 17, 45, 30), "A24DE0417",
            "CR2044", "Röntgen Thorax pa", "Groß^Stefan^^Dr.", LN_XR_UNSPEC, SCT_COUGH, "DR02",
            (cr("Thorax pa", "chest_xr", "CHEST", "PA", 430.0, None),),
        ),
        Study(
            "mueller-mr-2025", P_MUELLER, dt.datetime(2025, 1, 20, 11, 3, 0), "A25DE0033",
            "MR3310", "MRT Knie rechts", "Weber^Anna^^Dr.", LN_MR_UNSPEC, SCT_TRAUMA, "MR01",
            (
                mr("sag PD FS", 12, "knee_sag", "pdfs", "KNEE", "SAG", 160.0, (700.0, 1400.0),
                   mr_params("PDFS", 3000, 30, 8, 3.0), "R", 3.0),
                mr("cor T1", 12, "knee_cor", "t1", "KNEE", "COR", 160.0, (600.0, 1200.0),
                   mr_params("T1", 550, 12, 1, 3.0), "R", 3.0),
                mr("ax PD FS", 10, "knee_ax", "pdfs", "KNEE", "AX", 140.0, (700.0, 1400.0),
                   mr_params("PDFS", 3200, 32, 8, 3.0), "R", 3.5),
            ),
        ),
        Study(
            "smith-mr-2023", P_SMITH, dt.datetime(2023, 11, 8, 14, 30, 0), "IE23-88412",
            "MR5521", "MRI Brain without contrast", "O'Brien^Siobhan", LN_MR_HEAD, SCT_HEADACHE,
            "MRI2",
            (
                mr("sag T1 SE", 12, "head_sag", "t1", "HEAD", "SAG", 240.0, (600.0, 1200.0),
                   mr_params("T1", 500, 12, 1)),
                mr("ax T2 TSE", 16, "head", "t2", "HEAD", "AX", 230.0, (900.0, 1800.0),
                   mr_params("T2", 4000, 100, 16)),
                mr("ax FLAIR", 16, "head", "flair", "HEAD", "AX", 230.0, (600.0, 1200.0),
                   mr_params("FLAIR", 9000, 120, 20)),
            ),
        ),
        Study(
            "smith-ct-2024", P_SMITH, dt.datetime(2024, 9, 17, 2, 15, 40), "IE24-90233",
            "CT7734", "CT Abdomen with contrast", "O'Brien^Siobhan", LN_CT_ABDOMEN, SCT_FEVER,
            "CT-ED",
            (
                ct_scout(),
                ct("Abdomen PV 5mm", 24, "abdomen", "ABDOMEN", W_SOFT, CT_PARAMS),
            ),
        ),
        Study(
            "dubois-cr-2024", P_DUBOIS, dt.datetime(2024, 2, 29, 10, 20, 0), "LY24000187",
            "RX0187", "Radiographie main gauche", "Lefèvre^Amélie^^Dr", LN_XR_UNSPEC,
            SCT_TRAUMA, "RX03",
            (cr("Main gauche face", "hand_xr", "HAND", "PA", 240.0, "L"),),
        ),
        Study(
            "dubois-ct-2025", P_DUBOIS, dt.datetime(2025, 5, 5, 19, 58, 12), "LY25003311",
            "TDM3311", "Scanner cérébral sans injection", "Lefèvre^Amélie^^Dr", LN_CT_HEAD,
            SCT_DIZZINESS, "TDM1",
            (
                ct("Cerveau 5mm", 16, "head", "HEAD", W_BRAIN, CT_PARAMS, 240.0),
                ct("Os 5mm", 16, "head", "HEAD", W_BONE, CT_BONE_PARAMS, 240.0),
            ),
        ),
        Study(
            "rossi-mr-2023", P_ROSSI, dt.datetime(2023, 7, 1, 9, 0, 0), "RM23-004512",
            "RM4512", "RM Colonna lombare", "Bianchi^Giulia", LN_MR_SPINE, SCT_NEOPLASM, "RM-1",
            (
                mr("sag T2 TSE", 12, "spine_sag", "t2", "LSPINE", "SAG", 300.0, (900.0, 1800.0),
                   mr_params("T2", 3500, 95, 17)),
                mr("ax T2 TSE", 12, "spine_ax", "t2", "LSPINE", "AX", 200.0, (900.0, 1800.0),
                   mr_params("T2", 4200, 100, 15)),
            ),
        ),
        Study(
            "rossi-ct-2024", P_ROSSI, dt.datetime(2024, 12, 31, 23, 58, 0), "RM24-019977",
            "TC9977", "TC Torace Addome Pelvi con mdc", "Bianchi^Giulia", LN_CT_UNSPEC,
            SCT_LUNG_CANCER, "TC-2",
            (
                ct_scout(),
                ct("Torace arterioso 5mm", 12, "chest", "CHEST", W_SOFT, CT_PARAMS),
                ct("Addome venoso 5mm", 12, "abdomen", "ABDOMEN", W_SOFT, CT_PARAMS),
                ct("Tardiva 5mm", 10, "abdomen", "ABDOMEN", W_SOFT, CT_PARAMS),
            ),
            # two images of the arterial chest series; no description (the item is optional)
            (KeyObjects(DCM_OF_INTEREST, None, ((1, 5, ()), (1, 6, ())), 35, "+0100"),),
        ),
        Study(
            "rossi-cr-2025", P_ROSSI, dt.datetime(2025, 8, 11, 7, 30, 15), "RM25-021040",
            "RX1040", "RX Torace AP a letto", "Bianchi^Giulia", LN_XR_UNSPEC, SCT_CHEST_PAIN,
            "RX-MOB",
            (cr("Torace AP", "chest_xr", "CHEST", "AP", 430.0, None),),
        ),
        Study(
            "novak-ct-2023", P_NOVAK, dt.datetime(2023, 5, 10, 9, 41, 0), "BR23-00731",
            "CT0731", "CT břicha s kontrastem", "Dvořák^Petr^^MUDr.", LN_CT_ABDOMEN, SCT_FEVER,
            "CT-BR1",
            (ct("Břicho venózní 5mm", 12, "abdomen", "ABDOMEN", W_SOFT, CT_PARAMS),),
        ),
        Study(
            "novak-mr-2024", P_NOVAK, dt.datetime(2024, 3, 12, 15, 5, 0), "BR24-01288",
            "MR1288", "MR ledvin", "Dvořák^Petr^^MUDr.", LN_MR_UNSPEC, SCT_KIDNEY_DISEASE,
            "MR-BR1",
            (
                mr("cor T2 HASTE", 10, "spine_ax", "t2", "KIDNEY", "COR", 360.0, (900.0, 1800.0),
                   mr_params("T2", 1200, 90, 1)),
                mr("ax T1 VIBE", 10, "spine_ax", "t1", "KIDNEY", "AX", 360.0, (600.0, 1200.0),
                   mr_params("T1", 4, 2, 1)),
            ),
            # three images of two series: one document, two selections (one per series)
            (KeyObjects(DCM_OF_INTEREST, "Left kidney lesion",
                        ((0, 4, ()), (0, 5, ()), (1, 6, ())), 40, "+0100"),),
        ),
        Study(
            "novak-ct-2024", P_NOVAK, dt.datetime(2024, 11, 2, 7, 55, 20), "BR24-05512",
            "CT5512", "CT ledvin nativ", "Svobodová^Eva^^MUDr.", LN_CT_ABDOMEN,
            SCT_KIDNEY_DISEASE, "CT-BR2",
            (ct("Ledviny nativ 3mm", 12, "abdomen", "KIDNEY", W_SOFT, CT_PARAMS),),
        ),
        Study(
            "nowak-cr-2025", P_NOWAK, dt.datetime(2025, 3, 3, 13, 13, 13), "KR2500451",
            "RTG451", "RTG barku prawego", "Kowalczyk^Zofia^^lek.", LN_XR_UNSPEC, SCT_TRAUMA,
            "RTG-2",
            (cr("Bark prawy AP", "shoulder_xr", "SHOULDER", "AP", 300.0, "R"),),
        ),
    ]


# fmt: on


P_LARGE = Patient(
    "LARGE-CT-1",
    "Synthetic^LargeCT",
    "NCPEH-BENCH",
    "19700101",
    "O",
    "ISO_IR 100",
    "Loopback General Hospital",
)


P_XL = Patient(
    "XL-CT-1",
    "Synthetic^XLCT",
    "NCPEH-BENCH",
    "19700101",
    "O",
    "ISO_IR 100",
    "Loopback General Hospital",
)


def xl_study(instances: int, n_series: int, matrix: int) -> Study:
    """The ``xl`` set: the ``large`` study's shape under patient ``XL-CT-1`` and a seed of its
    own, one study per size (accession ``XL-{instances}x{matrix}``), so that benchmarks can
    hold a 500 MB and a 1 GB one side by side without touching ``large``."""
    return large_study(
        instances,
        n_series,
        matrix,
        key=f"xl-ct-{instances}-{n_series}-{matrix}",
        patient=P_XL,
        accession=f"XL-{instances}x{matrix}",
        study_id=f"XL{instances}",
    )


def large_study(
    instances: int,
    n_series: int,
    matrix: int,
    *,
    key: str = "large-ct",
    patient: Patient = P_LARGE,
    accession: str = "ACC-LARGE-1",
    study_id: str = "LARGE1",
) -> Study:
    """The ``large`` set: one CT chest-abdomen-pelvis study, ``instances`` slices in total."""
    kinds = [
        ("Thorax 1.25mm B30f", "chest", "CHEST", W_SOFT, CT_PARAMS),
        ("Abdomen 1.25mm B30f", "abdomen", "ABDOMEN", W_SOFT, CT_PARAMS),
        ("Pelvis 1.25mm B30f", "abdomen", "PELVIS", W_SOFT, CT_PARAMS),
        ("Thorax 1.25mm B70f", "chest", "CHEST", W_LUNG, CT_LUNG_PARAMS),
    ]
    series = []
    for s in range(n_series):
        count = instances // n_series + (1 if s < instances % n_series else 0)
        desc, kind, part, window, params = kinds[s % len(kinds)]
        series.append(ct(desc, count, kind, part, window, params, 500.0, 1.25, matrix))
    return Study(
        key,
        patient,
        dt.datetime(2024, 3, 14, 9, 26, 53),
        accession,
        study_id,
        "CT CHEST ABDOMEN PELVIS W CONTRAST",
        "Referrer^Rita",
        LN_CT_UNSPEC,
        SCT_NEOPLASM,
        "CT01",
        tuple(series),
    )


# --------------------------------------------------------------------------- DICOM encoding
def age(birth: str, on: dt.date) -> str:
    b = dt.datetime.strptime(birth, "%Y%m%d").date()
    years = on.year - b.year - ((on.month, on.day) < (b.month, b.day))
    return f"{years:03d}Y"


def geometry(series: Series, i: int) -> tuple[list[str], list[str], float, float]:
    """(ImagePositionPatient, ImageOrientationPatient, slice location, phantom t) of slice i."""
    n = series.count
    spacing = series.thickness * (1.1 if series.modality == "MR" else 1.0)
    offset = (i - (n - 1) / 2) * spacing  # along the slice normal, centred on the volume
    half = series.fov / 2
    t = 1 - (2 * i + 1) / n  # -1..1 over the stack, for the phantom
    if series.orientation == "SAG":  # slices from patient right to left
        ipp, iop, loc = [offset, -half, half], [0, 1, 0, 0, 0, -1], offset
    elif series.orientation == "COR":  # slices from anterior to posterior
        ipp, iop, loc = [-half, offset, half], [1, 0, 0, 0, 0, -1], offset
    else:  # AX (and PROJ, used by the CT localizer): slices from head to feet
        ipp, iop, loc = [-half, -half, -offset], [1, 0, 0, 0, 1, 0], -offset
        if series.orientation == "PROJ":
            ipp, iop, loc, t = [-half, 0.0, half], [1, 0, 0, 0, 0, -1], 0.0, 0.0
    return [ds_str(v) for v in ipp], [ds_str(v) for v in iop], loc, t


@dataclass(frozen=True)
class Job:
    """One instance to generate: identified by its study, series index and instance index."""

    seed: str
    study: Study
    s: int
    i: int

    @property
    def series(self) -> Series:
        return self.study.series[self.s]

    @property
    def study_uid(self) -> str:
        return uid(self.seed, self.study.key, "study")

    @property
    def series_uid(self) -> str:
        return uid(self.seed, self.study.key, "series", self.s)

    @property
    def sop_uid(self) -> str:
        return uid(self.seed, self.study.key, "sop", self.s, self.i)


def build_dataset(job: Job) -> Dataset:
    study, series, pat = job.study, job.series, job.study.patient
    sop_class = SOP_CLASS[series.modality]
    series_time = study.when + dt.timedelta(minutes=2 * job.s + 1)
    content_time = series_time + dt.timedelta(seconds=job.i)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(job.sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "NCPEH_SAMPLE_1"

    ds = Dataset()
    ds.file_meta = meta
    if pat.charset:
        ds.SpecificCharacterSet = pat.charset
    ds.ImageType = list(series.image_type)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = job.sop_uid
    _study_attributes(ds, study)
    ds.SeriesDate = series_time.strftime("%Y%m%d")
    ds.AcquisitionDate = ds.SeriesDate
    ds.ContentDate = content_time.strftime("%Y%m%d")
    ds.SeriesTime = series_time.strftime("%H%M%S")
    ds.AcquisitionTime = ds.SeriesTime
    ds.ContentTime = content_time.strftime("%H%M%S")
    ds.Modality = series.modality
    ds.Manufacturer = "NCPeH Synthetic"
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = f"sample_data {series.modality}"
    ds.BodyPartExamined = series.body_part
    if series.thickness:
        ds.SliceThickness = ds_str(series.thickness)
    ds.SoftwareVersions = "sample_data.py 1"
    ds.ProtocolName = series.protocol
    for keyword, value in series.params.items():
        setattr(ds, keyword, value)
    if series.modality in ("CT", "MR"):
        ds.PatientPosition = "FFS" if series.body_part == "KNEE" else "HFS"
    ds.StudyInstanceUID = job.study_uid
    ds.SeriesInstanceUID = job.series_uid
    ds.SeriesNumber = job.s + 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = job.i + 1
    ipp, iop, loc, t = geometry(series, job.i)
    n = series.matrix
    spacing = ds_str(series.fov / n)
    if series.modality == "CR":
        # displayed as if facing the patient: rows run to the patient's left, columns down
        ds.PatientOrientation = ["L", "F"]
        ds.ImagerPixelSpacing = [spacing, spacing]
    else:
        ds.ImagePositionPatient = ipp
        ds.ImageOrientationPatient = iop
        ds.FrameOfReferenceUID = uid(job.seed, study.key, "for")
        ds.PositionReferenceIndicator = ""
        if series.orientation != "PROJ":
            ds.SliceLocation = ds_str(loc)
    if series.laterality:
        ds.Laterality = series.laterality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = n
    ds.Columns = n
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = ds_str(series.window[0])
    ds.WindowWidth = ds_str(series.window[1])
    if series.modality == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    salt = job.i * 31 + job.s * 7
    ds.PixelData = render(series.kind, series.contrast, n, t, salt).tobytes()
    return ds


@dataclass(frozen=True)
class KosJob:
    """One Key Object Selection document to generate: ``study.key_objects[k]``."""

    seed: str
    study: Study
    k: int

    @property
    def kos(self) -> KeyObjects:
        return self.study.key_objects[self.k]

    @property
    def study_uid(self) -> str:
        return uid(self.seed, self.study.key, "study")

    @property
    def series_uid(self) -> str:
        return uid(self.seed, self.study.key, "kos-series", self.k)

    @property
    def sop_uid(self) -> str:
        return uid(self.seed, self.study.key, "kos", self.k)

    @property
    def created(self) -> dt.datetime:
        """Content, series and instance creation date and time (local, at ``timezone``)."""
        return self.study.when + dt.timedelta(minutes=self.kos.minutes)

    def referenced(self) -> list[tuple[Job, tuple[int, ...]]]:
        """The selected images as jobs of their own (their UIDs), with frame numbers."""
        out = []
        for s, i, frames in self.kos.references:
            if not (0 <= s < len(self.study.series) and 0 <= i < self.study.series[s].count):
                raise ValueError(f"{self.study.key}: key object {self.k} names no image {s}/{i}")
            out.append((Job(self.seed, self.study, s, i), frames))
        return out

    def by_series(self) -> dict[str, list[Job]]:
        """The selected images per series (Series Instance UID), in document order."""
        out: dict[str, list[Job]] = {}
        for job, _ in self.referenced():
            out.setdefault(job.series_uid, []).append(job)
        return out


def _study_attributes(ds: Dataset, study: Study) -> None:
    """Patient, General Study, Patient Study and equipment attributes every instance of a
    study carries alike (whichever instance Orthanc sees first fills its study record)."""
    pat = study.patient
    ds.StudyDate = study.when.strftime("%Y%m%d")
    ds.StudyTime = study.when.strftime("%H%M%S")
    ds.AccessionNumber = study.accession
    ds.InstitutionName = pat.institution
    ds.ReferringPhysicianName = study.referring
    ds.StationName = study.station
    ds.StudyDescription = study.description
    ds.ProcedureCodeSequence = DicomSequence([study.procedure.item()])
    ds.PatientName = pat.name
    ds.PatientID = pat.id
    ds.IssuerOfPatientID = pat.issuer
    ds.PatientBirthDate = pat.birth_date
    ds.PatientSex = pat.sex
    ds.PatientAge = age(pat.birth_date, study.when.date())
    ds.StudyID = study.study_id
    ds.ReasonForPerformedProcedureCodeSequence = DicomSequence([study.reason.item()])


def build_kos(job: KosJob) -> Dataset:
    """A Key Object Selection Document (PS3.3 A.35.4): Patient, General Study, Patient Study,
    Key Object Document Series (C.17.6.1), General Equipment, Key Object Document (C.17.6.2),
    SR Document Content (C.17.3; TID 2010 Key Object Selection) and SOP Common modules."""
    study, kos, pat = job.study, job.kos, job.study.patient
    created = job.created

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(KOS_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(job.sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "NCPEH_SAMPLE_1"

    ds = Dataset()
    ds.file_meta = meta
    if pat.charset:
        ds.SpecificCharacterSet = pat.charset
    ds.InstanceCreationDate = created.strftime("%Y%m%d")
    ds.InstanceCreationTime = created.strftime("%H%M%S")
    ds.SOPClassUID = KOS_STORAGE
    ds.SOPInstanceUID = job.sop_uid
    ds.TimezoneOffsetFromUTC = kos.timezone
    _study_attributes(ds, study)
    ds.StudyInstanceUID = job.study_uid
    # Key Object Document Series
    ds.Modality = "KO"
    ds.SeriesInstanceUID = job.series_uid
    ds.SeriesNumber = kos.series_number
    ds.SeriesDate = created.strftime("%Y%m%d")
    ds.SeriesTime = created.strftime("%H%M%S")
    ds.SeriesDescription = kos.series_description
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence([])  # Type 2
    # General Equipment
    ds.Manufacturer = "NCPeH Synthetic"
    ds.ManufacturerModelName = "sample_data KO"
    ds.SoftwareVersions = "sample_data.py 1"
    # Key Object Document
    ds.InstanceNumber = 1
    ds.ContentDate = created.strftime("%Y%m%d")
    ds.ContentTime = created.strftime("%H%M%S")
    evidence_series = []
    for series_uid, jobs in job.by_series().items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = DicomSequence([_sop_ref(j) for j in jobs])
        evidence_series.append(item)
    evidence = Dataset()
    evidence.StudyInstanceUID = job.study_uid
    evidence.ReferencedSeriesSequence = DicomSequence(evidence_series)
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([evidence])
    # SR Document General Module flags (C.17.2): not in the KOS IOD's module list (A.35.4),
    # written for consumers that read them; a strict IOD validator notes them
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    # SR Document Content: the root CONTAINER of TID 2010, titled from CID 7010
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([kos.title.item()])
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = DicomSequence([template])
    content = []
    if kos.description is not None:
        text = Dataset()
        text.RelationshipType = "CONTAINS"
        text.ValueType = "TEXT"
        text.ConceptNameCodeSequence = DicomSequence([DCM_KEY_OBJECT_DESCRIPTION.item()])
        text.TextValue = kos.description
        content.append(text)
    for image_job, frames in job.referenced():
        image = Dataset()
        image.RelationshipType = "CONTAINS"
        image.ValueType = "IMAGE"
        ref = _sop_ref(image_job)
        if frames:
            ref.ReferencedFrameNumber = list(frames)
        image.ReferencedSOPSequence = DicomSequence([ref])
        content.append(image)
    ds.ContentSequence = DicomSequence(content)
    return ds


def _sop_ref(job: Job) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = SOP_CLASS[job.series.modality]
    ref.ReferencedSOPInstanceUID = job.sop_uid
    return ref


def build(job: Job | KosJob) -> Dataset:
    return build_kos(job) if isinstance(job, KosJob) else build_dataset(job)


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def jobs_of(seed: str, studies: Sequence[Study]) -> Iterator[Job | KosJob]:
    for study in studies:
        for s, series in enumerate(study.series):
            for i in range(series.count):
                yield Job(seed, study, s, i)
        for k in range(len(study.key_objects)):
            yield KosJob(seed, study, k)


# --------------------------------------------------------------------------- Orthanc client
class UploadError(RuntimeError):
    pass


class Orthanc:
    """Thin REST client: one requests.Session per worker thread (keep-alive)."""

    def __init__(self, url: str, user: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.auth: tuple[str, str] | None = None
        if user:
            name, _, password = user.partition(":")
            self.auth = (name, password)
        self.timeout = timeout
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def session(self) -> requests.Session:
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.auth = self.auth
            self._local.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    def close(self) -> None:
        with self._lock:
            for s in self._sessions:
                s.close()
            self._sessions.clear()

    def get_json(self, path: str) -> Any:
        r = self.session().get(self.url + path, timeout=self.timeout)
        r.raise_for_status()
        return r.json()

    def post_instance(self, data: bytes) -> Json:
        """POST /instances; returns Orthanc's answer (ID, ParentStudy, Status...)."""
        last: Exception | None = None
        for _attempt in range(2):  # one retry: a kept-alive connection may have been closed
            try:
                r = self.session().post(
                    self.url + "/instances",
                    data=data,
                    headers={"Content-Type": "application/dicom"},
                    timeout=self.timeout,
                )
            except requests.ConnectionError as exc:
                last = exc
                continue
            if r.status_code != 200:
                raise UploadError(f"HTTP {r.status_code}: {_orthanc_error(r)}")
            answer: Json = r.json()
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise UploadError(f"unexpected answer {answer}")
            return answer
        raise UploadError(f"connection failed: {last}")


def _orthanc_error(r: requests.Response) -> str:
    """One line out of an Orthanc error answer ({"Message": ..., "Details": ...})."""
    try:
        err = r.json()
        return f"{err.get('Message', '')}: {err.get('Details', '')}".strip(": ")
    except ValueError:
        return " ".join(r.text.split())[:300]


# --------------------------------------------------------------------------- runners
def run_pool(
    items: Sequence[T], work: Callable[[T], R], threads: int, fail_fast: bool
) -> list[R | BaseException]:
    """Run ``work`` on every item in a thread pool; results in item order.

    With ``fail_fast`` the first exception cancels everything not started yet and is raised.
    """
    results: list[R | BaseException] = [UploadError("not run")] * len(items)
    with cf.ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=PROG) as pool:
        futures = {pool.submit(work, item): k for k, item in enumerate(items)}
        try:
            for fut in cf.as_completed(futures):
                k = futures[fut]
                exc = fut.exception()
                if exc is not None:
                    if fail_fast:
                        raise exc
                    results[k] = exc
                else:
                    results[k] = fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return results


def generate_set(
    name: str,
    seed: str,
    studies: Sequence[Study],
    orthanc: Orthanc | None,
    out: Path | None,
    threads: int,
) -> Json:
    """Generate, upload and/or write every instance of ``studies``; return the manifest entry."""
    jobs = list(jobs_of(seed, studies))
    if out is not None:
        (out / name).mkdir(parents=True, exist_ok=True)

    def work(job: Job | KosJob) -> int:
        data = encode(build(job))
        if out is not None:
            (out / name / f"{job.sop_uid}.dcm").write_bytes(data)
        if orthanc is not None:
            try:
                orthanc.post_instance(data)
            except (UploadError, requests.RequestException, ValueError) as exc:
                what = (
                    f"key object document {job.k + 1}"
                    if isinstance(job, KosJob)
                    else f"series {job.s + 1} instance {job.i + 1}"
                )
                raise UploadError(
                    f"{name}: upload of {job.study.key} {what} (SOP {job.sop_uid}) failed: {exc}"
                ) from exc
        return len(data)

    size_of: dict[str, int] = {}  # by SOP Instance UID
    for job, size in zip(jobs, run_pool(jobs, work, threads, fail_fast=True), strict=True):
        if isinstance(size, BaseException):  # cannot happen with fail_fast
            raise size
        size_of[job.sop_uid] = size
    entries: list[Json] = []
    key_objects: list[Json] = []
    for study in studies:
        series_out: list[Json] = []
        total = 0
        for s, series in enumerate(study.series):
            sops = [Job(seed, study, s, i).sop_uid for i in range(series.count)]
            total += sum(size_of[sop] for sop in sops)
            entry: Json = {
                "uid": Job(seed, study, s, 0).series_uid,
                "number": s + 1,
                "modality": series.modality,
                "description": series.description,
                "body_part": series.body_part,
                "sop_class_uid": SOP_CLASS[series.modality],
                "rows": series.matrix,
                "columns": series.matrix,
                "instances": sops,
            }
            if series.laterality:
                entry["laterality"] = series.laterality
            series_out.append(entry)
        for k, kos in enumerate(study.key_objects):
            kos_job = KosJob(seed, study, k)
            total += size_of[kos_job.sop_uid]
            series_out.append(
                {
                    "uid": kos_job.series_uid,
                    "number": kos.series_number,
                    "modality": "KO",
                    "description": kos.series_description,
                    "sop_class_uid": KOS_STORAGE,
                    "instances": [kos_job.sop_uid],
                }
            )
            key_objects.append(
                {
                    "patient_id": study.patient.id,
                    "study": kos_job.study_uid,
                    "series": kos_job.series_uid,
                    "sop": kos_job.sop_uid,
                    "sop_class_uid": KOS_STORAGE,
                    "title": [kos.title.value, kos.title.scheme, kos.title.meaning],
                    "description": kos.description,
                    "content_date": kos_job.created.strftime("%Y%m%d"),
                    "content_time": kos_job.created.strftime("%H%M%S"),
                    "timezone": kos.timezone,
                    "references": {
                        series_uid: [j.sop_uid for j in jobs]
                        for series_uid, jobs in kos_job.by_series().items()
                    },
                    "frames": {j.sop_uid: list(f) for j, f in kos_job.referenced() if f},
                }
            )
        entries.append(
            {
                "patient_id": study.patient.id,
                "patient_name": study.patient.name,
                "issuer_of_patient_id": study.patient.issuer,
                "patient_birth_date": study.patient.birth_date,
                "patient_sex": study.patient.sex,
                "specific_character_set": study.patient.charset,
                "study_uid": Job(seed, study, 0, 0).study_uid,
                "accession": study.accession,
                "study_id": study.study_id,
                "study_date": study.when.strftime("%Y%m%d"),
                "study_time": study.when.strftime("%H%M%S"),
                "study_description": study.description,
                "referring_physician": study.referring,
                "procedure_code": [study.procedure.value, study.procedure.scheme],
                "reason_code": [study.reason.value, study.reason.scheme],
                "modalities": sorted({s["modality"] for s in series_out}),
                "series": series_out,
                "instances": sum(len(s["instances"]) for s in series_out),
                "bytes": total,
            }
        )
    return {
        "seed": seed,
        "patients": len({s.patient.id for s in studies}),
        "studies": entries,
        "instances": len(jobs),
        "bytes": sum(e["bytes"] for e in entries),
        "kos": key_objects,  # Key Object Selection documents (also in their study's series)
    }


def testdata_dir() -> Path:
    # never pydicom.data.get_testdata_file(): files not bundled would be downloaded
    return Path(os.path.dirname(pydicom.data.__file__)) / "test_files"


def load_testdata(orthanc: Orthanc, threads: int) -> Json:
    """Upload every parseable bundled pydicom test file that has SOP and Study Instance UIDs."""
    warnings.simplefilter("ignore")  # many test files are deliberately odd
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    root = testdata_dir()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    # Several files share a SOP Instance UID (MR_small.dcm and its RLE, JPEG 2000, JPEG-LS
    # twins...). Orthanc keeps whichever arrives first, so uploads in parallel would pick one
    # at random: every file after the first (in name order) gets a SOP Instance UID of its own,
    # derived from its name. Each file is then an instance, and a series holds mixed syntaxes.
    renamed = _duplicate_sops(files)

    def work(path: Path) -> Json:
        data = path.read_bytes()
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
                return {"result": "skipped"}
            if path in renamed:
                data = _with_uids(data, renamed[path])
                for keyword, value in renamed[path].items():
                    setattr(ds, keyword, value)
        except Exception:
            return {"result": "skipped"}
        try:
            answer = orthanc.post_instance(data)
        except (UploadError, requests.RequestException, ValueError) as exc:
            return {"result": "rejected", "error": str(exc)[:200]}
        uids = {
            "study": str(ds.StudyInstanceUID),
            "series": str(ds.get("SeriesInstanceUID", "")),
            "sop": str(ds.SOPInstanceUID),
            "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
        }
        return {"result": "accepted", "answer": answer, "bytes": len(data), "uids": uids}

    outcomes = run_pool(files, work, threads, fail_fast=False)
    accepted = skipped = 0
    size = 0
    rejected: list[Json] = []
    instance_ids: set[str] = set()
    study_files: dict[str, int] = {}
    by_file: dict[str, Json] = {}
    for path, res in zip(files, outcomes, strict=True):
        rel = str(path.relative_to(root))
        if isinstance(res, BaseException):
            rejected.append({"file": rel, "error": repr(res)[:200]})
        elif res["result"] == "skipped":
            skipped += 1
        elif res["result"] == "rejected":
            rejected.append({"file": rel, "error": res["error"]})
        else:
            accepted += 1
            size += res["bytes"]
            instance_ids.add(res["answer"]["ID"])
            by_file[rel] = res["uids"]
            parent = res["answer"]["ParentStudy"]
            study_files[parent] = study_files.get(parent, 0) + 1
    studies = []
    for orthanc_id, n in study_files.items():
        tags = orthanc.get_json(f"/studies/{orthanc_id}")["MainDicomTags"]
        studies.append({"study_uid": tags.get("StudyInstanceUID", ""), "files": n})
    studies.sort(key=lambda s: s["study_uid"])
    return {
        "source": "pydicom " + pydicom.__version__ + " data/test_files",
        "files": len(files),
        "accepted": accepted,
        "skipped": skipped,
        "rejected": len(rejected),
        "rejected_files": rejected,
        "instances": len(instance_ids),  # distinct instances (several files share SOP UIDs)
        "bytes": size,
        "study_uids": [s["study_uid"] for s in studies],
        "studies": studies,
        "by_file": by_file,  # file name -> study, series, sop, transfer_syntax as loaded
    }


def _duplicate_sops(files: Sequence[Path]) -> dict[Path, dict[str, str]]:
    """A new SOP Instance UID for each file (in name order) whose UID an earlier one has."""
    seen: set[str] = set()
    renamed: dict[Path, dict[str, str]] = {}
    for path in files:
        try:
            sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        except Exception:
            continue
        if sop in seen:
            renamed[path] = {"SOPInstanceUID": uid("testdata", path.name)}
        seen.add(sop)
    return renamed


def _with_uids(data: bytes, uids: dict[str, str]) -> bytes:
    """The file with other UIDs (data set, and file meta for the SOP), otherwise as it was."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for _ in ds.iterall():
        pass  # read, UN elements of known tags take their VR: Orthanc keeps a UN Patient ID's
        # padding and would file the instance under another patient than its twins
    for keyword, value in uids.items():
        setattr(ds, keyword, value)
    if "SOPInstanceUID" in uids:
        ds.file_meta.MediaStorageSOPInstanceUID = UID(uids["SOPInstanceUID"])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


# --------------------------------------------------------------------------- CLI
def load_manifest(path: Path | None) -> Json:
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{PROG}: cannot read existing manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SystemExit(f"{PROG}: existing manifest {path} is not a JSON object")
    return data


def write_manifest(path: Path, data: Json) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sample_data.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--orthanc", metavar="URL", help="Orthanc base URL, e.g. $ORTHANC_URL")
    p.add_argument("--user", metavar="U:P", help="HTTP basic auth user:password")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        required=True,
        choices=["core", "large", "xl", "testdata"],
        help="data set to load (repeatable)",
    )
    p.add_argument("--manifest", type=Path, help="JSON manifest to write (merged if it exists)")
    p.add_argument("--out", type=Path, help="also write the generated .dcm files here")
    p.add_argument("--threads", type=int, default=4, help="parallel workers (default 4)")
    p.add_argument("--timeout", type=float, default=120.0, help="HTTP timeout in seconds")
    p.add_argument("--large-instances", type=int, default=500, metavar="N")
    p.add_argument("--large-series", type=int, default=4, metavar="N")
    p.add_argument("--large-matrix", type=int, default=512, metavar="N", help="rows = columns")
    p.add_argument("--xl-instances", type=int, default=1000, metavar="N")
    p.add_argument("--xl-series", type=int, default=4, metavar="N")
    p.add_argument("--xl-matrix", type=int, default=512, metavar="N", help="rows = columns")
    args = p.parse_args(argv)
    if not args.orthanc and not args.out:
        p.error("give --orthanc URL (upload) and/or --out DIR (files)")
    if "testdata" in args.sets and not args.orthanc:
        p.error("--set testdata needs --orthanc")
    if args.large_series < 1 or args.large_instances < args.large_series:
        p.error("--large-instances must be >= --large-series >= 1")
    if not 16 <= args.large_matrix <= 4096:
        p.error("--large-matrix must be in 16..4096")
    if args.xl_series < 1 or args.xl_instances < args.xl_series:
        p.error("--xl-instances must be >= --xl-series >= 1")
    if not 16 <= args.xl_matrix <= 4096:
        p.error("--xl-matrix must be in 16..4096")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    orthanc = Orthanc(args.orthanc, args.user, args.timeout) if args.orthanc else None
    if orthanc is not None:
        try:
            system = orthanc.get_json("/system")
        except (requests.RequestException, ValueError) as exc:
            log(f"Orthanc at {orthanc.url} is not answering /system: {exc}")
            return 2
        log(f"Orthanc {system.get('Version')} '{system.get('Name')}' at {orthanc.url}")
    manifest = load_manifest(args.manifest)
    status = 0
    try:
        for name in dict.fromkeys(args.sets):
            t0 = time.perf_counter()
            if name == "testdata":
                assert orthanc is not None
                entry = load_testdata(orthanc, args.threads)
                what = (
                    f"{entry['accepted']} of {entry['files']} files accepted "
                    f"({entry['instances']} distinct instances, {len(entry['study_uids'])} "
                    f"studies), {entry['skipped']} skipped, {entry['rejected']} rejected"
                )
                for bad in entry["rejected_files"]:
                    log(f"testdata: rejected {bad['file']}: {bad['error']}")
                if entry["accepted"] == 0:
                    status = 1
            else:
                if name == "core":
                    seed, studies = CORE_SEED, core_studies()
                elif name == "xl":
                    seed = XL_SEED
                    studies = [xl_study(args.xl_instances, args.xl_series, args.xl_matrix)]
                else:
                    seed = LARGE_SEED
                    studies = [
                        large_study(args.large_instances, args.large_series, args.large_matrix)
                    ]
                try:
                    entry = generate_set(name, seed, studies, orthanc, args.out, args.threads)
                except UploadError as exc:
                    log(f"FAILED: {exc}")
                    return 1
                what = (
                    f"{entry['patients']} patients, {len(entry['studies'])} studies, "
                    f"{sum(len(s['series']) for s in entry['studies'])} series, "
                    f"{entry['instances']} instances, {entry['bytes'] / 1e6:.1f} MB"
                )
            seconds = time.perf_counter() - t0
            entry["seconds"] = round(seconds, 2)
            manifest[name] = entry
            if args.manifest is not None:
                write_manifest(args.manifest, manifest)  # after each set: partial progress kept
            log(f"{name}: {what} in {seconds:.1f} s")
    finally:
        if orthanc is not None:
            orthanc.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
