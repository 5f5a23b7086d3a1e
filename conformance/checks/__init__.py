"""The checks, one module per area and aspect; importing this package registers them all, in
the order the reports list them: DICOMweb search (resources and matching, then the answers),
retrieval (retrieve and transfer syntaxes, metadata and URLs, errors and a real client, pixels),
then FHIR (search, its answers, the ImagingStudy) and security. Modules whose name starts with
``_`` hold what the checks of one area share and register nothing."""

from . import qido, qido_attributes, wado, wado_metadata, wado_errors  # noqa: F401, I001
from . import wado_pixels, fhir, fhir_bundle, fhir_study, security  # noqa: F401
