"""``voxserve`` command line: ``voxserve serve [--host H --port P ...]``.

Every flag mirrors a ``VOXSERVE_*`` environment variable (see ``voxserve serve --help``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from .settings import Settings

log = logging.getLogger("voxserve")


def uvicorn_config(app, settings: Settings):
    import ssl

    import uvicorn

    tls = {}
    if settings.tls:
        tls = {"ssl_certfile": settings.ssl_certfile, "ssl_keyfile": settings.ssl_keyfile}
        if settings.ssl_ca_certs:            # mutual TLS: devices present a certificate signed by this CA
            tls.update(ssl_ca_certs=settings.ssl_ca_certs, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,      # PCM does not compress; deflate only costs CPU
        ws_max_size=settings.max_message_bytes,   # the transport refuses bigger messages (close 1009)
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.drain_timeout_s + 2.0,
        backlog=4096,
        **tls,
    )


def make_server(settings: Settings, table=None):
    """A uvicorn server whose shutdown first drains voxserve streams (finals, then close 1012). ``table``:
    the shared worker table when this is one of ``--workers`` processes."""
    import uvicorn

    from .app import create_app

    app = create_app(settings, table=table)

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            for server in self.servers:
                server.close()
            await app.state.vox.drain()
            await super().shutdown(sockets)

    return DrainingServer(uvicorn_config(app, settings)), app


def serve(settings: Settings) -> int:
    from .logs import configure

    configure(settings.log_level, settings.log_format, secrets=(*settings.api_key_list, settings.jwt_secret))
    problem = settings.exposure_problem()
    if problem:
        print(f"voxserve: {problem}", file=sys.stderr)
        return 2
    workers = settings.worker_count
    server = None
    if workers <= 1:
        from voxserve.engines.base import EngineError
        try:
            server = make_server(settings)[0]
        except EngineError as exc:
            # an engine or model this machine lacks (e.g. --engine tensorrt without the package): the
            # message says what to install or choose instead; a traceback would only hide it
            print(f"voxserve: cannot start: {exc}", file=sys.stderr)
            return 2
    web, ws = ("https", "wss") if settings.tls else ("http", "ws")
    url = f"{web}://{settings.host}:{settings.port}"
    stream_url = f"{ws}://{settings.host}:{settings.port}/v1/stream"
    log.info("starting", extra={"url": url, "ws": stream_url, "pipelines": settings.pipeline_list,
                                "auth": "required" if settings.has_credentials else "off", "tls": settings.tls,
                                "workers": settings.worker_count})
    token_hint = " --token $VOXSERVE_TOKEN" if settings.has_credentials else ""
    print(f"voxserve listening on {url}  (browser client: {url}/ , stream: {stream_url})\n"
          f"try: voxserve-client stream speech.wav --url {stream_url}{token_hint} "
          f"--pipelines {','.join(settings.pipeline_list)}", file=sys.stderr, flush=True)
    if workers > 1:
        from .workers import run_workers

        return run_workers(settings, workers)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxserve", description="voxserve streaming voice inference server")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the server")
    Settings.add_arguments(p_serve)
    sub.add_parser("settings", help="print every setting with its flag, variable and default")
    args = parser.parse_args(argv)
    if args.command == "settings":
        for row in Settings().describe():
            print(f"{row['flag']:<26} {row['env']:<34} {row['default']!s:<14} {row['doc']}")
        return 0
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = Settings.from_env(**overrides)
    except ValueError as exc:
        print(f"voxserve: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
