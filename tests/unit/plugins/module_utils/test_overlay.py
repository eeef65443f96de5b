from __future__ import annotations

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import overlay


@pytest.mark.parametrize(("release", "expected"), [
    ("6.8.0-49-generic", True),      # Ubuntu 24.04
    ("6.18.44-fc-v1045", True),
    ("6.1.0-57-amd64", False),       # Debian 12: long layer lists go through mount(2)
    ("5.15.0-1-generic", False),
    ("garbage", False),
])
def test_lowerdir_plus_needs_linux_6_8(release: str, expected: bool) -> None:
    assert overlay._kernel_has_lowerdir_plus(release) is expected
