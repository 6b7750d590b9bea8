"""The security associations the suite asks for, as data, and their VICI form.

Theory of operation: a :class:`SaProfile` names one variant of the protected path
(ESP mode, ESP transform, IKE authentication, ESN, anti-replay window, lifetimes). It is
pure data; :func:`connection` turns it into the ``load-conn`` message of strongSwan's
VICI protocol for one host. Which variants an ESP implementation can carry is a table
too (:data:`LIMITS`): charon's kernel-libipsec does ESP in user space over a TUN device
and supports tunnel mode only, without Extended Sequence Numbers (its own log says
``unsupported mode`` and ``ESN not supported``, strongSwan 5.9.8); kernel ESP has both.
kernel-libipsec's anti-replay window is always on and of a fixed size (strongSwan's
libipsec/esp_context.c sets ``ESP_DEFAULT_WINDOW_SIZE`` whatever ``replay_window``
says; a profile's window of 0 still refuses replays there, measured).

The algorithm choices follow RFC 8221 (ESP: AES-GCM with a 16-octet ICV and AES-CBC
with HMAC-SHA-256-128 are MUST) as RFC 7146 applies them to iSCSI (catalog:
``conformance/requirements/ipsec.toml``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

__all__ = [
    "DEFAULT",
    "LIMITS",
    "PROFILES",
    "EspBackend",
    "SaProfile",
    "connection",
    "unsupported",
]

EspBackend = Literal["kernel-libipsec", "kernel"]
Mode = Literal["tunnel", "transport"]
Auth = Literal["psk", "pubkey"]

#: strongSwan proposal keywords for the transforms the requirements name.
ESP_TRANSFORMS = {
    "AES_GCM_16_128": "aes128gcm16",
    "AES_GCM_16_256": "aes256gcm16",
    "AES_CBC_128/HMAC_SHA2_256_128": "aes128-sha256",
}
#: IKE SA proposal (IKEv2; RFC 8247's MUST set: AES-CBC, HMAC-SHA2-256, group 14 or 19).
IKE_PROPOSAL = "aes128-sha256-ecp256"


@dataclasses.dataclass(frozen=True)
class SaProfile:
    """One protected-path variant. ``esp`` is a key of :data:`ESP_TRANSFORMS`."""

    name: str
    mode: Mode = "tunnel"
    esp: str = "AES_GCM_16_128"
    auth: Auth = "psk"
    esn: bool = False
    replay_window: int = 64  # anti-replay on (RFC 4303 3.4.3); 0 would turn it off
    rekey_time: int = 0  # seconds; 0: strongSwan's default (one hour)
    ike_proposal: str = IKE_PROPOSAL
    esp_proposal: str = ""  # overrides ESP_TRANSFORMS[esp] (a no-common-proposal case)

    @property
    def esp_keyword(self) -> str:
        return self.esp_proposal or ESP_TRANSFORMS[self.esp] + ("-esn" if self.esn else "")

    def describe(self) -> str:
        return (
            f"{self.name}: ESP {self.esp} in {self.mode} mode, IKEv2 {self.auth}, "
            f"ESN {'on' if self.esn else 'off'}, replay window {self.replay_window}"
        )


#: The variants the area runs: every transform with PSK, then certificates, then
#: transport mode and ESN (which only kernel ESP carries).
PROFILES = (
    SaProfile("psk-gcm128-tunnel"),
    SaProfile("psk-gcm256-tunnel", esp="AES_GCM_16_256"),
    SaProfile("psk-cbc128sha256-tunnel", esp="AES_CBC_128/HMAC_SHA2_256_128"),
    SaProfile("cert-gcm256-tunnel", esp="AES_GCM_16_256", auth="pubkey"),
    SaProfile("psk-gcm128-transport", mode="transport"),
    SaProfile("cert-gcm128-transport-esn", mode="transport", auth="pubkey", esn=True),
)
DEFAULT = PROFILES[0]

#: What each ESP implementation cannot carry: (field, value) -> reason.
LIMITS: dict[EspBackend, dict[tuple[str, object], str]] = {
    "kernel-libipsec": {
        ("mode", "transport"): "charon's kernel-libipsec supports tunnel mode only "
        "(strongSwan 5.9.8 logs 'IPsec SA: unsupported mode')",
        ("esn", True): "charon's kernel-libipsec has no Extended Sequence Numbers "
        "(strongSwan 5.9.8 logs 'IPsec SA: ESN not supported')",
    },
    "kernel": {},
}


def unsupported(profile: SaProfile, backend: EspBackend) -> str | None:
    """Why ``backend`` cannot carry ``profile``, or None."""
    for (field, value), reason in LIMITS[backend].items():
        if getattr(profile, field) == value:
            return reason
    return None


def connection(
    profile: SaProfile,
    *,
    name: str,
    local: str,
    remote: str,
    local_id: str,
    remote_id: str,
    cert: str | None = None,
    cacert: str | None = None,
    initiator: bool,
    port: int = 3260,
) -> dict[str, Any]:
    """The VICI ``load-conn`` message for one end of ``profile``.

    The child SA covers TCP to and from the iSCSI port between the two hosts only
    (``local_ts``/``remote_ts``), so IKE itself (UDP 500/4500) never enters it. UDP
    encapsulation is forced (``encap``): kernel-libipsec sends ESP through charon's
    own UDP socket (RFC 3948 encapsulation).
    """
    child: dict[str, Any] = {
        "mode": profile.mode,
        "esp_proposals": [profile.esp_keyword],
        "local_ts": [f"{local}/32[tcp/{port}]" if not initiator else f"{local}/32[tcp]"],
        "remote_ts": [f"{remote}/32[tcp]" if not initiator else f"{remote}/32[tcp/{port}]"],
        "replay_window": profile.replay_window,
        "start_action": "none",
        "dpd_action": "clear",
    }
    if profile.rekey_time:
        child["rekey_time"] = f"{profile.rekey_time}s"
        child["life_time"] = f"{profile.rekey_time * 2}s"
        child["rand_time"] = "0s"
    local_auth: dict[str, Any] = {"auth": profile.auth, "id": local_id}
    remote_auth: dict[str, Any] = {"auth": profile.auth, "id": remote_id}
    if profile.auth == "pubkey":
        if cert is None or cacert is None:
            raise ValueError(f"{profile.name}: certificate authentication needs cert and cacert")
        local_auth["certs"] = [cert]
        remote_auth["cacerts"] = [cacert]
    return {
        name: {
            "version": 2,
            "local_addrs": [local],
            "remote_addrs": [remote],
            "proposals": [profile.ike_proposal],
            "encap": "yes",
            "mobike": "no",
            "send_cert": "always",
            "local": local_auth,
            "remote": remote_auth,
            "children": {"iscsi": child},
        }
    }
