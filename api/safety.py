"""What `alma serve` refuses to start with, and whether it listens beyond this machine."""

from __future__ import annotations

import ipaddress

from alma.settings import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refusals(settings: Settings) -> list[str]:
    """Combinations that would serve wrong answers, each with its fix. Authentication has no
    off switch, so there is no unsafe combination of it to refuse."""
    found = []
    if not settings.run_projections and not settings.chroma_url:
        found.append(
            "ALMA_RUN_PROJECTIONS=false needs ALMA_CHROMA_URL: `alma worker` would index into "
            "an embedded Chroma of its own process, whose vector index this process does not "
            "reload, so searches here would miss new memories. Run a Chroma server "
            "(`chroma run`) and point both at it."
        )
    return found
