"""blindlink: privacy-preserving record matching between two parties under a signed agreement.

The public Python API is what `__all__` names; everything else is internal. Names load on first
use, so `import blindlink` stays light and the optional extras load only when used.
"""

from __future__ import annotations

import importlib as _importlib
from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _version
from typing import TYPE_CHECKING

from blindlink.extras import MissingExtra
from blindlink.extras import extra_for as _extra_for

try:
    __version__ = _version("blindlink")
except _NotInstalled:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# Public name -> the module that holds it.
_HOMES = {
    "Agreement": "blindlink.agreement.model",
    "BlindlinkError": "blindlink.errors",
    "ConfigurationResult": "blindlink.benchmarking.tradeoff",
    "Client": "blindlink.client.client",
    "ClientTls": "blindlink.client.linkage_client",
    "Encoded": "blindlink.encoded",
    "Estimates": "blindlink.matching.decision",
    "InputError": "blindlink.errors",
    "LinkResult": "blindlink.local_linkage",
    "LinkageSchema": "blindlink.encoding.schema",
    "PartyInfo": "blindlink.agreement.model",
    "Results": "blindlink.client.client",
    "RunFailed": "blindlink.client.client",
    "ServerError": "blindlink.client.linkage_client",
    "SignedAgreement": "blindlink.agreement.signing",
    "TradeoffResult": "blindlink.benchmarking.tradeoff",
    "encode": "blindlink.encoded",
    "link": "blindlink.local_linkage",
    "load_agreement": "blindlink.agreement.signing",
    "load_schema": "blindlink.encoding.schema",
    "new_agreement_document": "blindlink.agreement.model",
    "party_info": "blindlink.agreement.signing",
    "sign_agreement": "blindlink.agreement.signing",
    "tradeoff": "blindlink.benchmarking.tradeoff",
}
# Public names whose home calls them otherwise.
_ALIASES = {
    "link": "link_locally",
    "sign_agreement": "sign_with_files",
    "tradeoff": "tradeoff_benchmark",
}

__all__ = [
    "Agreement",
    "BlindlinkError",
    "Client",
    "ConfigurationResult",
    "ClientTls",
    "Encoded",
    "Estimates",
    "InputError",
    "LinkResult",
    "LinkageSchema",
    "MissingExtra",
    "PartyInfo",
    "Results",
    "RunFailed",
    "ServerError",
    "SignedAgreement",
    "TradeoffResult",
    "__version__",
    "encode",
    "link",
    "load_agreement",
    "load_schema",
    "new_agreement_document",
    "party_info",
    "sign_agreement",
    "tradeoff",
]

if TYPE_CHECKING:
    from blindlink.agreement.model import Agreement, PartyInfo, new_agreement_document
    from blindlink.agreement.signing import SignedAgreement, load_agreement, party_info
    from blindlink.agreement.signing import sign_with_files as sign_agreement
    from blindlink.benchmarking.tradeoff import ConfigurationResult, TradeoffResult
    from blindlink.benchmarking.tradeoff import tradeoff_benchmark as tradeoff
    from blindlink.client.client import Client, Results, RunFailed
    from blindlink.client.linkage_client import ClientTls, ServerError
    from blindlink.encoded import Encoded, encode
    from blindlink.encoding.schema import LinkageSchema, load_schema
    from blindlink.errors import BlindlinkError, InputError
    from blindlink.local_linkage import LinkResult
    from blindlink.local_linkage import link_locally as link
    from blindlink.matching.decision import Estimates


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'blindlink' has no attribute {name!r}")
    try:
        module = _importlib.import_module(home)
    except ModuleNotFoundError as exc:
        extra = _extra_for(exc)
        if extra is None:
            raise
        raise MissingExtra(extra, f"blindlink.{name}") from None
    value = getattr(module, _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
