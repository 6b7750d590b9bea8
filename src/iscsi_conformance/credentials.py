"""A peer's CHAP user and secret, as configured (a leaf: it imports nothing of ours).

Shared by the initiator, the drivers and the plugin; the secret never reaches a repr.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ChapCredentials:
    user: str
    secret: str = dataclasses.field(repr=False)  # never printed

    def __repr__(self) -> str:
        return f"ChapCredentials(user={self.user!r}, secret='***')"
