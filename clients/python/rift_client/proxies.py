"""Which proxy from the environment httpx sends the service's requests through, for the error
of a connection that failed: then it was the proxy that did not answer, not the service.

httpx (``trust_env``, the default, without a ``transport=``) reads ``HTTP_PROXY``,
``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (either case) as curl does; a company laptop or a
JupyterHub often sets them for the whole session, so a service on ``127.0.0.1`` is asked through
a proxy that cannot reach it. The rules below are httpx's (``httpx._utils.
get_environment_proxies``, private, so restated): ``NO_PROXY=*`` turns proxies off; an address or
``localhost`` is matched exactly; ``.example.com`` matches its subdomains, ``example.com`` the name
and its subdomains."""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.request

#: The ``user:password@`` of a URL, kept out of messages.
_USERINFO = re.compile(r"//[^/?#]*@")


def shown_url(text: str) -> str:
    """``text`` with a URL's ``user:password@`` replaced by ``…@``."""
    return _USERINFO.sub("//…@", text)


def environment_proxy(scheme: str, host: str) -> str | None:
    """The proxy httpx uses for ``scheme://host`` from the environment, and the variable that
    set it (``'http://proxy:3128' (HTTPS_PROXY)``, its password out); None when none applies."""
    proxies = urllib.request.getproxies()  # as httpx reads them
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or _bypassed(host, proxies.get("no", "")):
        return None
    named = scheme if proxies.get(scheme) else "all"
    variable = next((name for name in (f"{named.upper()}_PROXY", f"{named}_proxy")
                     if os.environ.get(name)), f"{named.upper()}_PROXY")
    return f"{shown_url(proxy)!r} ({variable})"


def _bypassed(host: str, no_proxy: str) -> bool:
    host = host.lower().strip("[]")
    for entry in (part.strip().lower() for part in no_proxy.split(",")):
        if entry == "*":
            return True
        if not entry or "://" in entry:
            continue
        bare = entry.strip("[]")
        if bare == "localhost" or _is_address(bare):
            if host == bare:
                return True
        elif host.endswith(bare) if bare.startswith(".") else \
                host == bare or host.endswith("." + bare):
            return True
    return False


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
