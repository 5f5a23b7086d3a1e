"""DIMSE status → our error: one table (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4; PS3.7 C)."""

from __future__ import annotations

from ...errors import BackendBusy, BackendError, GatewayError, warning_value

__all__ = ["CANCEL", "PENDING", "SUCCESS", "WARNING_SUBOPS", "error_for_status", "is_failure"]

SUCCESS = 0x0000
CANCEL = 0xFE00
PENDING = frozenset({0xFF00, 0xFF01})
WARNING_SUBOPS = 0xB000  # C-GET/C-MOVE: one or more sub-operations failed

# status → (error class, meaning); ranges are matched on the high byte afterwards.
_STATUS: dict[int, tuple[type[GatewayError], str]] = {
    0xA700: (BackendBusy, "out of resources"),
    0xA701: (BackendBusy, "out of resources: unable to calculate number of matches"),
    0xA702: (BackendBusy, "out of resources: unable to perform sub-operations"),
    0xA801: (BackendError, "move destination unknown (the PACS does not know the gateway)"),
    0xA900: (BackendError, "identifier does not match SOP class"),
    0x0122: (BackendError, "SOP class not supported"),
    0x0124: (BackendError, "refused: not authorized"),
    0x0210: (BackendError, "duplicate invocation"),
    0x0211: (BackendError, "unrecognized operation"),
    0x0212: (BackendError, "mistyped argument"),
}
_HIGH_BYTE: dict[int, tuple[type[GatewayError], str]] = {
    0xA9: (BackendError, "identifier does not match SOP class"),
    0xC0: (BackendError, "unable to process"),
    0xC1: (BackendError, "unable to process"),
    0xC2: (BackendError, "unable to process"),
}


def is_failure(status: int) -> bool:
    return status not in PENDING and status not in (SUCCESS, CANCEL, WARNING_SUBOPS)


def error_for_status(status: int, operation: str) -> GatewayError:
    """The error a failed DIMSE operation maps to, with a Warning naming the status."""
    cls, meaning = (
        _STATUS.get(status)
        or _HIGH_BYTE.get(status >> 8)
        or (
            BackendError,
            "failed",
        )
    )
    text = f"{operation} failed with DIMSE status 0x{status:04X} ({meaning})"
    headers = {"Warning": warning_value(text)}
    if cls is BackendBusy:
        headers["Retry-After"] = "5"
    return cls(f"the PACS: {text}", detail={"dimse_status": f"0x{status:04X}"}, headers=headers)
