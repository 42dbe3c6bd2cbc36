"""Token buckets, reservations and the x-ratelimit-* headers, on a fake clock."""

from __future__ import annotations

import pytest

from chatd.api.errors import APIError
from chatd.api.ratelimit import RateLimiter, TokenBucket, go_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def headers(limiter: RateLimiter, key: str | None) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in limiter.headers(key)}


def test_bucket_refills_continuously() -> None:
    clock = Clock()
    bucket = TokenBucket(60, clock)  # one per second
    for _ in range(60):
        assert bucket.take(1) == 0
    assert bucket.take(1) == pytest.approx(1.0)
    clock.now += 0.5
    assert bucket.take(1) == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take(1) == 0
    assert bucket.reset_in() == pytest.approx(60.0)
    bucket.give(1000)
    assert bucket.remaining() == 60 and bucket.reset_in() == 0


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.0121, "12ms"), (0.0001, "1ms"), (1, "1s"), (1.5, "1.5s"),
    (20.25, "20.25s"), (360, "6m0s"), (61.5, "1m1.5s"), (3725, "1h2m5s")])
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_requests_per_minute_429_says_which_limit_and_when() -> None:
    clock = Clock()
    limiter = RateLimiter(2, None, clock)
    limiter.take_request("a")
    limiter.take_request("a")
    with pytest.raises(APIError) as exc:
        limiter.take_request("a")
    err = exc.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    assert err.type == "requests"
    assert "requests per minute" in err.message and "resets in" in err.message
    assert err.headers["Retry-After"] == "30"  # 2/min: one back every 30 s
    limiter.take_request("b")  # other keys have their own budget
    clock.now += 30
    limiter.take_request("a")


def test_tokens_reserved_then_settled_with_the_real_count() -> None:
    clock = Clock()
    limiter = RateLimiter(None, 1000, clock)
    first = limiter.take_request("k")
    limiter.reserve_tokens(first, 800, prompt_tokens=100)
    assert headers(limiter, "k")["x-ratelimit-remaining-tokens"] == "200"
    second = limiter.take_request("k")
    with pytest.raises(APIError) as exc:
        limiter.reserve_tokens(second, 300, prompt_tokens=100)
    assert exc.value.type == "tokens" and "tokens per minute" in exc.value.message
    assert int(exc.value.headers["Retry-After"]) >= 1
    first.settle(150)  # used 150 of the 800 reserved
    assert headers(limiter, "k")["x-ratelimit-remaining-tokens"] == "850"
    first.settle(0)  # settling twice changes nothing
    assert headers(limiter, "k")["x-ratelimit-remaining-tokens"] == "850"
    limiter.reserve_tokens(second, 300, prompt_tokens=100)


def test_request_larger_than_the_budget_is_not_retried() -> None:
    limiter = RateLimiter(None, 100, Clock())
    reservation = limiter.take_request("k")
    with pytest.raises(APIError) as exc:
        limiter.reserve_tokens(reservation, 101, prompt_tokens=1)
    assert exc.value.headers == {"x-should-retry": "false"}
    assert "Request too large" in exc.value.message


def test_cancel_refunds_request_and_tokens() -> None:
    limiter = RateLimiter(1, 100, Clock())
    reservation = limiter.take_request("k")
    limiter.reserve_tokens(reservation, 60, prompt_tokens=10)
    reservation.cancel()
    got = headers(limiter, "k")
    assert got["x-ratelimit-remaining-requests"] == "1"
    assert got["x-ratelimit-remaining-tokens"] == "100"


def test_headers() -> None:
    clock = Clock()
    limiter = RateLimiter(60, 6000, clock)
    assert headers(limiter, None) == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "60",
        "x-ratelimit-reset-requests": "0s", "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "6000", "x-ratelimit-reset-tokens": "0s"}
    limiter.take_request("k")
    got = headers(limiter, "k")
    assert got["x-ratelimit-remaining-requests"] == "59"
    assert got["x-ratelimit-reset-requests"] == "1s"
    assert RateLimiter(None, None).headers("k") == []
    only_rpm = {k.decode() for k, _ in RateLimiter(5, None).headers("k")}
    assert only_rpm == {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                        "x-ratelimit-reset-requests"}
