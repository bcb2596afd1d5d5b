"""Scaling out on Ray Serve: N replicas of the gpt_rs server, each its own process with its own
engine and CPU threads, behind Ray Serve's HTTP proxy, with the same OpenAI routes as
``gpt-rs serve``. Needs ``pip install "ray[serve]"`` and the serve extra.

From Python::

    from ray import serve
    from gpt_rs.ray_serve import deployment

    serve.run(deployment("model.gguf", replicas=2, threads=1), route_prefix="/")
    # http://127.0.0.1:8000/v1/chat/completions, as with gpt-rs serve

From the command line (``serve run`` / ``serve deploy`` call ``build_app`` with the
``key=value`` arguments)::

    serve run gpt_rs.ray_serve:build_app model=model.gguf replicas=2 threads=1
"""

from __future__ import annotations

import os
from typing import Any, Optional


def _asgi_builder(
    model: str,
    threads: int,
    max_batch: int,
    max_queue: int,
    model_name: Optional[str],
    api_key: Optional[str],
):
    def build():
        # Runs in each replica's process: its own threads, model and engine.
        import gpt_rs
        from gpt_rs.server import create_app

        gpt_rs.set_num_threads(threads)
        m = gpt_rs.load_model(model)
        engine = gpt_rs.Engine(m, max_batch=max_batch, max_queue=max_queue)
        name = model_name or os.path.basename(os.path.normpath(model))
        return create_app(engine, name, api_key=api_key)

    return build


def deployment(
    model: str,
    *,
    replicas: int = 2,
    threads: int = 1,
    max_batch: int = 8,
    max_queue: int = 64,
    model_name: Optional[str] = None,
    api_key: Optional[str] = None,
):
    """A bound Ray Serve application: ``replicas`` copies of the server, each reserving
    ``threads`` CPUs (Ray places them so replicas do not share cores)."""
    from ray import serve

    model = os.path.abspath(model) if os.path.exists(model) else model
    ingress = serve.ingress(
        _asgi_builder(model, threads, max_batch, max_queue, model_name, api_key)
    )

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": threads})
    @ingress
    class GptRsServer:
        pass

    return GptRsServer.bind()


def build_app(args: dict[str, Any]):
    """The application builder of ``serve run gpt_rs.ray_serve:build_app model=... ...``."""
    known = {"model", "replicas", "threads", "max_batch", "max_queue", "model_name", "api_key"}
    unknown = set(args) - known
    if unknown or "model" not in args:
        raise ValueError(
            f"build_app takes model=PATH and optionally {sorted(known - {'model'})}; "
            f"got {sorted(args)}"
        )
    ints = {k: int(args[k]) for k in ("replicas", "threads", "max_batch", "max_queue") if k in args}
    return deployment(
        str(args["model"]),
        model_name=args.get("model_name"),
        api_key=args.get("api_key"),
        **ints,
    )
