"""UID validation (PS3.5 9.1): components of digits separated by dots, at most 64 chars."""

from __future__ import annotations

import re

from ..errors import InvalidUID

__all__ = ["check_uid", "is_valid_uid"]

# Each component is "0" or a number without a leading zero (PS3.5 9.1). Real archives hold
# UIDs with leading zeros now and then, so we accept them: refusing them would hide studies.
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def is_valid_uid(value: str) -> bool:
    """True if ``value`` is a syntactically valid UID (PS3.5 9.1)."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def check_uid(value: str, what: str = "UID") -> str:
    """Return ``value`` if valid, else raise :class:`InvalidUID` naming ``what``."""
    if not is_valid_uid(value):
        raise InvalidUID(
            f"{what} is not a valid DICOM UID (digits and dots, at most 64 characters)",
            detail={"parameter": what, "value": value[:80]},
        )
    return value
