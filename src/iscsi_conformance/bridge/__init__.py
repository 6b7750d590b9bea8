"""The conformance bridge (issue 15): a relay between any initiator and any target that
decodes every PDU both ways with ``core``, judges it against one table of wire rules
citing the requirements catalog (``judge``), records it as pcapng (``capture``), and
injects faults on demand (``faults``, applied by ``pump``). ``cli`` is
``iscsi-conformance bridge``.
"""
