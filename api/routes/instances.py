"""Instances (Instancia): create under a character, list, read (now or back then), edit,
delete, fork, open the conversation with the character's greeting."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response

from alma.api.deps import (
    AlmaApp,
    AsOf,
    Audit,
    AuditCaughtUp,
    CharacterCards,
    CurrentCaller,
    Cursor,
    Erase,
    ExpectedVersion,
    Limit,
    Listing,
    PromptWarmer,
)
from alma.api.idempotency import RetrySafe
from alma.api.schemas import (
    GreetingOut,
    GreetingRequest,
    InstanceCreate,
    InstanceEdit,
    InstanceFork,
    InstanceOut,
    Page,
)
from alma.domain import InvalidInput, Keep

router = APIRouter(tags=["instances"])


@router.post("/v1/characters/{character_id}/instances", status_code=201, dependencies=[RetrySafe])
def create_instance(
    character_id: UUID,
    body: InstanceCreate,
    caller: CurrentCaller,
    app: AlmaApp,
    warm: PromptWarmer,
) -> InstanceOut:
    voice = body.voice.model_dump(exclude_none=True) if body.voice else None
    instance = app.create_instance(
        caller.tenant,
        character_id,
        body.name,
        body.memory,
        caller.actor,
        voice=voice,
        user_name=body.user_name,
    )
    warm(caller.tenant, [instance.id], None)
    return InstanceOut.of(instance)


@router.get("/v1/characters/{character_id}/instances")
def list_instances(
    character_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    listing: Listing,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[InstanceOut]:
    app.character(caller.tenant, character_id)
    items, next_cursor = listing.page(
        "instance",
        caller.tenant,
        cursor,
        limit,
        parent_id=character_id,
        load=lambda id_: InstanceOut.of(app.instance(caller.tenant, id_)),
    )
    return Page[InstanceOut](items=items, next_cursor=next_cursor)


@router.get("/v1/instances/{instance_id}")
def get_instance(
    instance_id: UUID, caller: CurrentCaller, app: AlmaApp, as_of: AsOf
) -> InstanceOut:
    instance = app.instance(caller.tenant, instance_id, as_of.version, as_of.at)
    return InstanceOut.of(instance)


@router.patch("/v1/instances/{instance_id}")
def edit_instance(
    instance_id: UUID,
    body: InstanceEdit,
    caller: CurrentCaller,
    app: AlmaApp,
    expected_version: ExpectedVersion,
    warm: PromptWarmer,
) -> InstanceOut:
    patch = body.patch()
    instance = app.edit_instance(
        caller.tenant,
        instance_id,
        caller.actor,
        name=patch.get("name", Keep.KEEP),
        memory=patch.get("memory", Keep.KEEP),
        expected_version=expected_version,
        voice=patch.get("voice", Keep.KEEP),
        user_name=patch.get("user_name", Keep.KEEP),
    )
    warm(caller.tenant, [instance_id], None)
    return InstanceOut.of(instance)


@router.delete("/v1/instances/{instance_id}", status_code=204)
def delete_instance(
    instance_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    expected_version: ExpectedVersion,
    erase: Erase = False,
) -> Response:
    """Archives it; with `erase=true` erases it, its memories and messages for good."""
    if erase:
        app.erase_instance(caller.tenant, instance_id, caller.actor)
    else:
        app.archive_instance(caller.tenant, instance_id, caller.actor, expected_version)
    return Response(status_code=204)


@router.post("/v1/instances/{instance_id}/fork", status_code=201, dependencies=[RetrySafe])
def fork_instance(
    instance_id: UUID,
    body: InstanceFork,
    caller: CurrentCaller,
    app: AlmaApp,
    audit: Audit,
    audit_caught_up: AuditCaughtUp,
    warm: PromptWarmer,
) -> InstanceOut:
    """A new instance with everything this one remembered at `at_version` or `at` (default:
    now): memory text, voice, memory snippets and conversation, as the fork's own events."""
    if body.at_version is not None and body.at is not None:
        raise InvalidInput("give either at_version or at, not both", "at")
    point = app.fork_point(caller.tenant, instance_id, body.at_version, body.at)
    audit_caught_up()  # the audit knows which snippets the instance had, and when
    memories = audit.memories_at(instance_id, point.until)
    instance = app.fork_instance(
        caller.tenant, instance_id, body.name, caller.actor, point, memories
    )
    warm(caller.tenant, [instance.id], None)
    return InstanceOut.of(instance)


@router.post("/v1/instances/{instance_id}/greeting", status_code=201, dependencies=[RetrySafe])
def greet(
    instance_id: UUID,
    caller: CurrentCaller,
    cards: CharacterCards,
    body: GreetingRequest,
    warm: PromptWarmer,
) -> GreetingOut:
    """Opens the conversation with the character's greeting or one of its alternates (its
    Character Card's `first_mes` and `alternate_greetings`), recorded as the character's first
    message; 409 once the conversation has started."""
    message_id, index, content = cards.greet(caller.tenant, instance_id, body.index, caller.actor)
    warm(caller.tenant, [instance_id], None)  # the conversation starts with the greeting
    return GreetingOut(id=message_id, index=index, content=content)
