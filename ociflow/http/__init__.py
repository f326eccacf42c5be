"""The HTTP transport stack: small layers over one ``send(request)`` call."""
