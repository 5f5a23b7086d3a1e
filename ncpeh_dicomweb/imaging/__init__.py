"""Pixel work on DICOM Part 10 files as stored: frames, bulk data, transcoding, rendering.

Pure functions on a local file path (no aiohttp, no PACS); the web layer runs the heavy ones
in a bounded process pool (:mod:`.pool`) so a large decode never blocks the event loop.
"""
