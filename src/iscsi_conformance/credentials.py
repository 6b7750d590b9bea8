"""A CHAP account: a user and secret as configured (a leaf: it imports nothing of ours).

``core.chap.ChapCredentials`` is the wire form (the secret as bytes) the CHAP machines
use; this is what users write, and what the drivers, the plugin and the initiator pass
around.

Shared by the initiator, the drivers and the plugin; the secret never reaches a repr.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ChapAccount:
    user: str
    secret: str = dataclasses.field(repr=False)  # never printed

    def __repr__(self) -> str:
        return f"ChapAccount(user={self.user!r}, secret='***')"
