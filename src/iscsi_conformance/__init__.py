"""iSCSI conformance and interoperability suite.

Layers, bottom up (each imports only the ones below it):

- ``core``: the sans-IO protocol (RFC 7143): PDUs, digests, text keys, negotiation,
  login, CHAP, naming, sequencing. No sockets, no clocks.
- ``scsi``: sans-IO SCSI: CDB builders, sense data, and the logical-unit emulation
  (SPC-4/SBC-3, SCSI-2 and persistent reservations) that the reference target serves.
- ``target`` / ``initiator``: the reference peers, asyncio adapters over the core.
- ``peers``: drivers for real third-party peers (tgt, LIO, open-iscsi, libiscsi).
- ``plugin``: the pytest plugin (pairings, fixtures, markers, result capture).
- ``report``: the versioned JSON result format, merge, HTML/JUnit rendering.
- ``fuzz``: Hypothesis strategies and state machines over the core.
- ``cli``: the ``iscsi-conformance`` command.
"""

__version__ = "0.1.0"
