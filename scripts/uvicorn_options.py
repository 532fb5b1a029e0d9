"""Print the uvicorn options that follow from the settings, one per line.

Used by scripts/run.sh and scripts/serve.sh, so `make run` and `make serve` trust proxy headers
in the same cases and bound connections the same way. The settings are read as the app reads
them (the environment, then .env); invalid ones exit 1 with the reason on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import Settings, get_settings


def uvicorn_options(settings: Settings) -> list[str]:
    """The options, in uvicorn's command-line form."""
    if settings.forwarded_allow_ips:
        # Only these peers (the reverse proxy) may set the client address and scheme.
        proxy = ["--proxy-headers", "--forwarded-allow-ips", settings.forwarded_allow_ips]
    else:
        # uvicorn by itself trusts X-Forwarded-For from 127.0.0.1: any local client could then
        # choose its own address, and with it a fresh per-IP rate-limit budget.
        proxy = ["--no-proxy-headers"]
    return [
        *proxy,
        "--timeout-keep-alive",
        str(settings.keep_alive_seconds),
        "--limit-concurrency",
        str(settings.max_connections_per_worker),
    ]


def main() -> int:
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("\n".join(uvicorn_options(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
