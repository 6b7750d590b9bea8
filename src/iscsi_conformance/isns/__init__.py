"""The reference iSNS server (RFC 4171): ``database`` and ``engine`` are sans-IO;
``server`` is the asyncio adapter behind ``iscsi-conformance isns``."""
