"""An independent, deliberately simple multipart/related splitter for checking the gateway."""

from __future__ import annotations

import re


def split_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a whole multipart body as (headers, payload); asserts it is complete."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, content_type
    delimiter = b"--" + match.group(1).encode()
    assert body.rstrip().endswith(delimiter + b"--"), "multipart body lacks its closing delimiter"
    chunks = body.split(b"\r\n" + delimiter)
    first = chunks[0]
    assert first.startswith(delimiter) or delimiter in first
    chunks[0] = first[first.index(delimiter) + len(delimiter) :]
    parts = []
    for chunk in chunks[:-1] if chunks[-1].startswith(b"--") else chunks:
        head, _, payload = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload))
    return parts
