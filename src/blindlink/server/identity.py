"""Who is calling: the party that the transport vouches for.

With TLS (the default) the caller is the party whose client-certificate fingerprint the
project's agreement names. Without TLS (`serve --insecure`, loopback only, for development) the
caller's role is taken on trust from the `blindlink-party` metadata entry.
"""

from __future__ import annotations

import grpc

from blindlink.agreement.model import ROLES, Agreement
from blindlink.security.tls import peer_fingerprint
from blindlink.server.status import ServiceError

PARTY_METADATA_KEY = "blindlink-party"


class PartyResolver:
    def __init__(self, tls: bool) -> None:
        self.tls = tls

    def role(self, context: grpc.ServicerContext, agreement: Agreement) -> str:
        """The caller's role in `agreement`; PERMISSION_DENIED if it is not a party to it."""
        role = (
            agreement.role_for_certificate(peer_fingerprint(context))
            if self.tls
            else _claimed_role(context)
        )
        if role is None:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "parties: your client certificate is not one the agreement names for this project",
            )
        return role


def _claimed_role(context: grpc.ServicerContext) -> str:
    values = [v for k, v in context.invocation_metadata() if k == PARTY_METADATA_KEY]
    if len(values) != 1 or values[0] not in ROLES:
        raise ServiceError(
            grpc.StatusCode.UNAUTHENTICATED,
            f"the call must name exactly one party role ({', '.join(ROLES)}) in "
            f"'{PARTY_METADATA_KEY}' metadata",
        )
    return str(values[0])
