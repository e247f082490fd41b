"""gateway.fd_limit: the open-file limit is raised towards the hard limit, and a shortfall is logged."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from gateway.fd_limit import raise_fd_limit


@pytest.fixture
def original_limit() -> Iterator[tuple[int, int]]:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_the_soft_limit_is_raised_to_the_hard_one(original_limit: tuple[int, int]) -> None:
    _soft, hard = original_limit
    if hard == resource.RLIM_INFINITY or hard <= 64:
        pytest.skip("needs a finite hard limit above 64")
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    assert raise_fd_limit(32) == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_a_limit_below_the_need_is_logged(original_limit: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:
    _soft, hard = original_limit
    if hard == resource.RLIM_INFINITY:
        pytest.skip("needs a finite hard limit")
    with caplog.at_level(logging.WARNING, logger="gateway.fd_limit"):
        assert raise_fd_limit(hard + 1) == hard
    assert "TENANTGATE_MAX_CONNECTIONS" in caplog.text and str(hard) in caplog.text
