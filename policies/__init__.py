"""Tenant policies: model access, rate limits and quotas, PII redaction, output filters.

Planned (see ROADMAP): one JSON policy document per tenant. Free of Litestar; raises
:class:`policies.errors.PolicyError`.
"""
