"""Our daemon in a guest runs this very installation: one that lives where
the guest mounts a tmpfs (a CI clone in /tmp) is shared into the guest and
bind-mounted back (a CI rehearsal from a clone in /tmp failed without it)."""

from __future__ import annotations

from pathlib import Path

from dmvpn.lab.vmnode import hidden_installation


def test_an_installation_in_tmp_is_shared_once() -> None:
    found = hidden_installation(Path("/tmp/ci/dmvpn/.venv"), Path("/tmp/ci/dmvpn/src"))
    assert found == [Path("/tmp/ci/dmvpn/.venv"), Path("/tmp/ci/dmvpn/src")]
    nested = hidden_installation(Path("/tmp/ci"), Path("/tmp/ci/dmvpn/src"))
    assert nested == [Path("/tmp/ci")]


def test_an_installation_the_guest_sees_is_not_shared() -> None:
    assert hidden_installation(Path("/work/main/.venv"), Path("/work/main/src")) == []
    assert hidden_installation(Path("/usr"), Path("/tmp/x/src")) == [Path("/tmp/x/src")]
