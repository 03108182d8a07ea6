"""``python -m service [--host H] [--port P]``: serve the API with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.server import guarded_protocol, raise_file_limit
from service.settings import ServiceSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Sketch search HTTP service; configured by SBIR_* environment variables "
        "(SBIR_MODEL_DIR, SBIR_INDEX_DIR, ...); flags override them.",
    )
    parser.add_argument("--host", help="address to listen on (SBIR_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (SBIR_PORT, default 8000)")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.add_argument("--no-access-log", action="store_true", help="no line per request")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as err:
        print(f"error: invalid settings: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raise_file_limit(settings.max_connections)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings),  # connection limits and a request-head timeout
        log_level=args.log_level,
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=settings.keep_alive_s,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
