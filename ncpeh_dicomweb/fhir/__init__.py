"""Pure FHIR logic (no aiohttp, no PACS): ImagingStudy search parameters and their push-down to
QIDO, the DICOM JSON → ImagingStudy / Patient / Endpoint mapping in R4 and R5, Bundles,
OperationOutcomes and the CapabilityStatement. The web shell is ``web/fhir.py``."""
