"""Driver scripts for the Python peers (oras-py, python-dxf), run as subprocesses by the harness.

Each driver does one job (pull, push or copy) with its library's documented API, so that the
harness measures wall time, CPU time and peak RSS of that library alone. They import neither
``ociflow`` nor the harness: only the standard library, ``layout`` beside them, and the peer.
"""
