"""tenantgate's HTTP surface and composition root: the only package that knows Litestar."""

__version__ = "0.1.0"
