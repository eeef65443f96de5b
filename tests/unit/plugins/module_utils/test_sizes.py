from __future__ import annotations

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils.sizes import SizeError, format_size, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("10M", 10 * 1024**2), ("200MB", 200 * 1024**2), ("1.5GiB", 3 * 1024**3 // 2), ("4096", 4096),
    (" 64 k ", 64 * 1024), ("1T", 1024**4), (512, 512), ("max", "max"), ("unlimited", "max"), (-1, "max"),
    ("0", 0),
])
def test_parse(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["-5M", "ten", "10X", "", "1..5M", True, -3, "M"])
def test_rejects_with_accepted_forms(text):
    with pytest.raises(SizeError, match="invalid size"):
        parse_size(text)


def test_finite_only():
    with pytest.raises(SizeError, match="finite"):
        parse_size("max", allow_unlimited=False)


def test_format_round_trips():
    for text in ("10M", "1G", "3K", "1000", "max"):
        assert format_size(parse_size(text)) == text
