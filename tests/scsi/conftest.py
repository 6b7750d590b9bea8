"""Fixtures for the SCSI layer tests: a logical unit whose I_T nexuses have already
consumed their power-on unit attention."""

from __future__ import annotations

import pytest
from scsi_util import NODE_A, NODE_B, NODE_C, attach, make_lu

from iscsi_conformance.scsi.device import LogicalUnit


@pytest.fixture
def lu() -> LogicalUnit:
    unit = make_lu()
    attach(unit, NODE_A, NODE_B, NODE_C)
    return unit
