"""DIMSE (C-FIND, C-MOVE/C-GET) backend: a PACS reached over the DICOM upper layer."""
