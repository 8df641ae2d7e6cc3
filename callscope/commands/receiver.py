"""Stream-receiver command: receiver (the reference receiver of the MiniVoice Testing section)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def receiver(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0 for all).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0 picks a free one).")] = 8765,
    *,
    certfile: Annotated[
        Path | None,
        typer.Option("--certfile", help="PEM certificate (chain) to serve wss://; MiniVoice requires wss."),
    ] = None,
    keyfile: Annotated[
        Path | None, typer.Option("--keyfile", help="PEM private key, if not inside --certfile.")
    ] = None,
    endpoint: Annotated[
        list[str] | None,
        typer.Option(
            "--endpoint",
            help="OTLP/HTTP traces URL to export spans to (repeatable). Default: $CALLSCOPE_OTLP_ENDPOINTS, "
            "then the OTEL_EXPORTER_OTLP_* variables, then http://localhost:4318/v1/traces.",
        ),
    ] = None,
    json_log: Annotated[
        Path | None,
        typer.Option("--json-log", help="Also write the collector's JSON log lines here (for backfill)."),
    ] = None,
    summary_every: Annotated[
        float,
        typer.Option("--summary-every", help="Seconds between media summaries per connection.", min=0.1),
    ] = 5.0,
    service_name: Annotated[
        str, typer.Option("--service-name", help="service.name of the exported spans.")
    ] = "callscope-reference-receiver",
) -> None:
    """Run a MiniVoice stream receiver that logs connection open, media received, disconnect and errors.

    The receiver the MiniVoice docs' Testing section asks for: point a start_stream action at it,
    place a test call, and read who connected, whether media arrived, and who closed with which
    code. Audio is dropped, never stored. Each connection is also a `stream.receiver` span.
    Stop it with Ctrl-C.

    Example: callscope receiver --host 0.0.0.0 --port 8765 --certfile cert.pem --keyfile key.pem
    """
    import asyncio
    import signal
    import ssl
    import sys

    from collectors import configure, stats
    from collectors.reference_receiver import ConsoleSetup, ReferenceReceiver, server_ssl_context
    from collectors.tracing import ConfigurationError

    if keyfile is not None and certfile is None:
        raise typer.BadParameter("--keyfile needs --certfile", param_hint="--keyfile")
    ssl_context = None
    if certfile is not None:
        try:
            ssl_context = server_ssl_context(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise typer.BadParameter(
                f"cannot load the TLS certificate/key: {exc}", param_hint="--certfile/--keyfile"
            ) from exc
    try:
        provider = configure(service_name=service_name, endpoints=endpoint)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--endpoint") from exc

    setup = ConsoleSetup(json_log=json_log, stream=sys.stderr)
    reference = ReferenceReceiver(summary_interval_s=summary_every, tracer_provider=provider)

    def ready(url: str) -> None:
        typer.echo(f"callscope receiver: listening on {url} (Ctrl-C to stop)", err=True)
        if ssl_context is None:
            typer.echo(
                "callscope receiver: plain ws://; MiniVoice needs wss: add --certfile/--keyfile", err=True
            )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await reference.serve(host, port, ssl_context=ssl_context, ready=ready, stop=stop)

    try:
        asyncio.run(run())
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot listen on {host}:{port}: {exc.strerror}", param_hint="--port"
        ) from exc
    finally:
        provider.force_flush(timeout_millis=5000)
        setup.close()
    counted = stats()
    typer.echo(
        f"callscope receiver: stopped after {reference.connections} connection(s); spans exported "
        f"{counted['spans_exported']}, dropped {counted['spans_dropped']}",
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.command()(receiver)
