"""Who is calling: the party role the transport vouches for."""

from __future__ import annotations

import grpc

from blindlink.agreement.model import ROLES
from blindlink.server.status import ServiceError

PARTY_METADATA_KEY = "blindlink-party"


def caller_role(context: grpc.ServicerContext) -> str:
    """The caller's party role, from the `blindlink-party` metadata entry."""
    values = [v for k, v in context.invocation_metadata() if k == PARTY_METADATA_KEY]
    if len(values) != 1 or values[0] not in ROLES:
        raise ServiceError(
            grpc.StatusCode.UNAUTHENTICATED,
            f"the call must name exactly one party role ({', '.join(ROLES)}) in "
            f"'{PARTY_METADATA_KEY}' metadata",
        )
    return str(values[0])
