"""Service URLs a user may name (the Pushgateway, an S3 endpoint): parsed, checked, rebuilt.

The operator runs with the cluster's credentials inside the cluster network, so a URL taken
from a run's spec must never aim it at anything but the documented API path of the named
service. One definition serves three layers: `URL_PATTERN` and `BLOCKED_HOSTS_RULE` go into the
CRD (the API server refuses such runs), `url_problem` backs the pydantic models (render and the
operator agree with the API server), and `pushgateway_group_url` rebuilds the one URL the
operator ever sends a request to.

Refused: schemes other than http and https; userinfo (`user@host` hides the real host); query
strings and fragments (they turn a base URL into any path); whitespace and control characters;
IPv6 literals and numeric host spellings (`2852039166`, `0xa9.0xfe...`) that hide an address;
link-local addresses (169.254.0.0/16, where the cloud metadata services live) and the metadata
services' names.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, urlsplit

# A DNS name whose last label starts with a letter, or a dotted quad without leading zeros.
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_HOST = (
    r"(([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z]([-a-z0-9]*[a-z0-9])?"
    rf"|{_OCTET}(\.{_OCTET}){{3}})"
)
# Path characters of RFC 3986 without '?' and '#' (no query, no fragment) and without '$',
# parentheses, quotes, ';', '&', '!' and '*' (the kubelet expands $(VAR) in env values).
_PATH = r"(/[-A-Za-z0-9._~%=:@/+,]*)?"
URL_PATTERN = rf"^https?://{_HOST}(:[0-9]{{1,5}})?{_PATH}$"
METADATA_HOSTS = ("metadata.google.internal", "metadata", "metadata.azure.internal")
# The CEL form of the host blocklist (the pattern above already refuses the other spellings).
BLOCKED_HOSTS_RULE = (
    "!self.matches('^https?://(169[.]254[.][0-9.]+|"
    + "|".join(h.replace(".", "[.]") for h in METADATA_HOSTS)
    + ")([:/]|$)')"
)
BLOCKED_HOSTS_MESSAGE = "must not name a link-local address or a cloud metadata service"


def url_problem(url: str) -> str | None:
    """Why `url` may not be used as a service URL, or None when it may."""
    import re

    if not re.fullmatch(URL_PATTERN[1:-1], url):
        return (
            "must be http(s)://host[:port][/path] with a DNS name or IPv4 address, and no "
            "user, query string, fragment or whitespace"
        )
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        return "has an invalid port"
    if port is not None and not 0 < port < 65536:
        return "has an invalid port"
    if host in METADATA_HOSTS:
        return BLOCKED_HOSTS_MESSAGE
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_link_local or address.is_unspecified or address.is_multicast:
        return BLOCKED_HOSTS_MESSAGE
    return None


class UnsafeURL(ValueError):
    pass


def base_url(url: str) -> str:
    """scheme://host[:port][/path] rebuilt from its checked parts, without a trailing '/'."""
    problem = url_problem(url)
    if problem:
        raise UnsafeURL(f"{url!r} {problem}")
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def pushgateway_group_url(base: str, job: str, grouping_key: dict[str, str]) -> str:
    """The Pushgateway API path of one group: <base>/metrics/job/<job>/<label>/<value>...

    Labels and values are path-quoted (nothing is left to split a segment); the base is checked
    and rebuilt by `base_url`, so the result is the documented API path on the named host."""
    path = f"/metrics/job/{quote(job, safe='')}"
    for label, value in grouping_key.items():
        path += f"/{quote(label, safe='')}/{quote(value, safe='')}"
    return base_url(base) + path
