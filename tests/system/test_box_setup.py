"""The system tier's set-up succeeds when its work is already done (issue 19, finding 20).

A machine where zsvc was installed once, or where another check created group
``zsvc``, has that group in every box (the box's root is an overlay of the
machine's): ``groupadd --system zsvc`` alone failed there and all the system
tests errored. Installing zsvc.service a second time in the same box, where
the group, the wrapper, the unit and the work directory all exist, shows that
every set-up step is idempotent.
"""

from __future__ import annotations

from tests.system.box import install_zsvc
from tests.system.conftest import Zsvc


def test_installing_again_over_an_existing_group_succeeds(zsvc_service: Zsvc) -> None:
    box = zsvc_service.box
    assert box.run("getent", "group", "zsvc").returncode == 0, "the first install made it"
    install_zsvc(box)  # raised BoxError ("group 'zsvc' already exists") before
    assert box.run("getent", "group", "zsvc").stdout.count("zsvc:") == 1
    zsvc_service.ok("ping")  # the daemon runs on through a daemon-reload
