"""The one retry policy: doubling waits with jitter, and the wait an upstream asked for."""

from __future__ import annotations

import pytest

from modelyard.retry import Backoff, retry_after_s


def test_waits_double_up_to_the_cap_and_jitter_stays_within_its_share():
    assert [Backoff(1, 30, jitter=0).delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    waits = [Backoff(2, 30, jitter=0.25).delay(1) for _ in range(200)]
    assert min(waits) >= 3.0 and max(waits) <= 5.0 and len(set(waits)) > 1


@pytest.mark.parametrize("headers, cap, wait", [
    ({"retry-after-ms": "1500", "retry-after": "9"}, None, 1.5),  # OpenAI's milliseconds come first
    ({"retry-after": "7"}, None, 7.0),
    ({"retry-after": "120"}, 30.0, 30.0),
    ({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, None, None),  # a date: our own backoff decides
    ({}, None, None), (None, None, None),
])
def test_the_upstreams_wait_is_read_from_either_header(headers, cap, wait):
    assert retry_after_s(headers, cap_s=cap) == wait
