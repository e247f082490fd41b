"""In-process micro-benchmarks of gateway code (``python -m tests.bench.<name>``); they print figures.

They import ``gateway`` modules directly, which ``loadtests/`` may not (it drives the gateway as a process,
from outside, as an operator would). pytest collects nothing here: no module is named ``test_*.py``.
"""
