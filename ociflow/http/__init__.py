"""The HTTP transport stack: small layers over one ``send(request)`` call.

- :mod:`~ociflow.http.options`   :class:`HttpOptions` (per-registry settings)
- :mod:`~ociflow.http.message`   ``Request``, ``Response``, the ``Handler`` protocol, ``Layer``
- :mod:`~ociflow.http.transport` the aiohttp transport (bottom layer) and the ``Session``
- :mod:`~ociflow.http.headers`   User-Agent and identity encoding
- :mod:`~ociflow.http.redirect`  manual redirects: GET/HEAD only, ≤10 hops, no downgrade,
  credentials dropped on an origin change
- :mod:`~ociflow.http.client`    ``RegistryClient``: one registry's scheme and layer stack
- :mod:`~ociflow.http.errors`    statuses, OCI error bodies and aiohttp exceptions → errors
- :mod:`~ociflow.http.redact`    URLs made safe for messages and logs
"""
