"""What drives peers for the conformance tests, apart from pytest.

Theory of operation: the plugin (``iscsi_conformance.plugin``) is pytest glue only:
options, hooks, fixtures and markers. What those fixtures hand to a test, and what
the hooks call to run one, lives here and imports nothing of pytest or of the plugin
(an import-linter contract in pyproject.toml says so):

- ``profiles``: the fixed set of targets every target peer is asked to serve, and
  the run's CHAP credentials;
- ``peerpool``: the peers of a run, resolved from names or URLs, started once,
  exported to and attached by pytest-xdist workers, checked and restarted;
- ``probe``: a login driven PDU by PDU on ``core.login.InitiatorLogin``, and a raw
  full-feature connection, for tests that must see exactly what a target answers;
- ``observer``: the man-in-the-middle proxy between an initiator under test and the
  reference target, which records and may rewrite what passes;
- ``runner``: runs one test function (an ``async def`` one on a fresh event loop,
  within a bounded time).
"""
