"""`sdcpu serve`: the web page, the JSON API and A1111's API for one model (the serve extra)."""

from __future__ import annotations

from typing import Annotated

import typer

from sdcpu.cli.app import console, fail
from sdcpu.cli.options import Model, with_load_options
from sdcpu.errors import SdcpuError
from sdcpu.runtime.options import LoadOptions


@with_load_options
def serve(
    model: Model = None,
    host: Annotated[str, typer.Option(help="address to listen on; beyond 127.0.0.1 it needs --api-key")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on", min=1, max=65535)] = 7860,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SDCPU_API_KEY", help="a key every request must carry (Basic auth password, Bearer or X-API-Key)"
        ),
    ] = None,
    queue: Annotated[int, typer.Option(help="jobs waiting or running at most; more are refused with 429")] = 16,
    preview_every: Annotated[int, typer.Option(help="a preview image every N steps (0: none)")] = 1,
    *,
    options: LoadOptions,
) -> None:
    """Serve a web page, a JSON API and an A1111-compatible API (/sdapi/v1) for one model (the serve extra)."""
    from sdcpu.runtime.pipelines.base import Pipeline

    try:
        import uvicorn

        from sdcpu.serve.app import create_app
        from sdcpu.serve.limits import ServeLimits
        from sdcpu.serve.security import check_bind
    except ImportError as err:
        missing = SdcpuError(f"sdcpu serve needs the serve extra ({err.name} is missing): pip install 'sdcpu[serve]'")
        raise fail(missing) from None
    try:
        check_bind(host, api_key)
        if queue < 1 or preview_every < 0:
            raise SdcpuError("--queue must be at least 1 and --preview-every at least 0")
        with console.status("loading model"):
            pipe = Pipeline.load(model, options)
    except SdcpuError as err:
        raise fail(err) from None
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
    console.print(f"serving {pipe.model_name} at http://{shown}:{port}/ (A1111 API at /sdapi/v1)", highlight=False)
    app_ = create_app(pipe, ServeLimits(queue=queue), api_key, preview_every)
    # Open event streams and waiting A1111 calls end with their jobs: give them 5 s, then the app's
    # shutdown cancels what is queued or running.
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
