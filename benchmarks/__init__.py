"""Throughput benchmarks: ociflow side by side with skopeo, oras-py and python-dxf.

Run ``python -m benchmarks.run --help`` from the repository root; see ``benchmarks/README.md``.
Nothing here is imported by ``ociflow`` itself.
"""
