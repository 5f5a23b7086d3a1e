"""Conformance harness: checks a DICOMweb (PS3.18) and NCPeH FHIR endpoint against our
conformance statement. Runs against any base URL: ``ncpeh-dicomweb conformance --base-url``."""
