"""ociflow: a fast, verifying transfer engine for container images and OCI artifacts."""

__version__ = "0.1.0"
