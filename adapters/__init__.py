"""Tenant LoRA adapters: validation, storage, registry and placement on engine replicas.

Planned (see ROADMAP): uploads under ``/v1/adapters``, per-tenant namespaces, load on demand through
vLLM's runtime LoRA API. The package stays free of Litestar; it raises :class:`adapters.errors.AdapterError`.
"""
