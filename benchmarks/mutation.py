"""The suite's mutation score as a benchmark (issue 10, item 5).

A thin wrapper of ``iscsi-conformance mutate`` (``iscsi_conformance.mutation``): every
named mutant of the reference target, one at a time, against the suite area it belongs
to; prints killed or survived (and by which tests) per mutant, then the score.
Arguments pass through, e.g.::

    python benchmarks/mutation.py -j 2 --json mutation.json
    python benchmarks/mutation.py --sample-per-area 1 --seed 2026-11-30
"""

from __future__ import annotations

import sys

from iscsi_conformance.mutation.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
