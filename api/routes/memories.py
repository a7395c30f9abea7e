"""Memories (Memoria): snippets an instance remembers, semantic search over everything it
remembers, and importing past conversation turns."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from alma.api.deps import (
    AlmaApp,
    ConversationCaughtUp,
    ConversationLog,
    CurrentCaller,
    Cursor,
    Index,
    IndexCaughtUp,
    Limit,
    Within,
)
from alma.api.idempotency import RetrySafe
from alma.api.message_import import BODIES, messages_sent
from alma.api.pagination import MAX_POSITION, decode_cursor, encode_cursor
from alma.api.schemas import (
    MemoryCreate,
    MemoryEdit,
    MemoryForgotten,
    MemoryOut,
    MessageOut,
    MessagesImported,
    Page,
    SearchResult,
    SearchResults,
    WithdrawnMessage,
)
from alma.chat.forgetting import forget_with_messages
from alma.domain import Instance, NotFound
from alma.domain.chat_file import write_chat_file
from alma.projections import Conversation, Message

router = APIRouter(tags=["memories"])


@router.post("/v1/instances/{instance_id}/memories", status_code=201, dependencies=[RetrySafe])
def add_memory(
    instance_id: UUID, body: MemoryCreate, caller: CurrentCaller, app: AlmaApp
) -> MemoryOut:
    memory = app.add_memory(
        caller.tenant,
        instance_id,
        body.text,
        caller.actor,
        body.metadata,
        body.importance,
        occurred_at=body.occurred_at,
        speaker=body.speaker,
    )
    return MemoryOut.of(memory)


@router.get("/v1/instances/{instance_id}/memories")
def list_memories(
    instance_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    index: Index,
    caught_up: IndexCaughtUp,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[MemoryOut]:
    app.instance(caller.tenant, instance_id)
    caught_up()
    docs = index.memories(instance_id, decode_cursor(cursor), limit)
    items = []
    for doc in docs:
        try:
            items.append(MemoryOut.of(app.memory(caller.tenant, instance_id, UUID(doc.doc_id))))
        except NotFound:
            continue  # forgotten after the index caught up
    next_cursor = encode_cursor(docs[-1].position) if len(docs) == limit else None
    return Page[MemoryOut](items=items, next_cursor=next_cursor)


@router.get("/v1/instances/{instance_id}/memories/search")
def search_memories(
    instance_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    index: Index,
    caught_up: IndexCaughtUp,
    period: Within,
    q: Annotated[str, Query(min_length=1, max_length=2000, pattern=r"\S")],
    k: Annotated[int, Query(ge=1, le=100)] = 10,
    min_score: Annotated[float, Query(ge=0, le=1)] = 0.0,
    consistent: Annotated[
        bool, Query(description="wait until the index has every event written before the call")
    ] = False,
) -> SearchResults:
    app.instance(caller.tenant, instance_id)
    if consistent:
        caught_up()
    hits = index.search(instance_id, q, k, min_score, period=period)
    return SearchResults(results=[SearchResult.of(hit) for hit in hits])


@router.get("/v1/instances/{instance_id}/memories/{memory_id:uuid}")
def get_memory(
    instance_id: UUID, memory_id: UUID, caller: CurrentCaller, app: AlmaApp
) -> MemoryOut:
    return MemoryOut.of(app.memory(caller.tenant, instance_id, memory_id))


@router.patch("/v1/instances/{instance_id}/memories/{memory_id:uuid}")
def edit_memory(
    instance_id: UUID, memory_id: UUID, body: MemoryEdit, caller: CurrentCaller, app: AlmaApp
) -> MemoryOut:
    memory = app.patch_memory(caller.tenant, instance_id, memory_id, caller.actor, body.patch())
    return MemoryOut.of(memory)


Recall = Annotated[
    Literal["memory", "messages"],
    Query(
        description="memory: forget only the snippet (204); messages: also take out of recall "
        "the messages it was formed from and those that state it, and list them (200)"
    ),
]


@router.delete(
    "/v1/instances/{instance_id}/memories/{memory_id:uuid}",
    status_code=204,
    response_model=None,
    responses={200: {"model": MemoryForgotten, "description": "with recall=messages"}},
)
def forget_memory(
    instance_id: UUID,
    memory_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    index: Index,
    caught_up: IndexCaughtUp,
    recall: Recall = "memory",
) -> Response:
    if recall == "memory":
        app.forget_memory(caller.tenant, instance_id, memory_id, caller.actor)
        return Response(status_code=204)
    caught_up()  # every message said before the call can be found
    withdrawn = forget_with_messages(
        app, index, caller.tenant, instance_id, memory_id, caller.actor
    )
    body = MemoryForgotten(
        memory_id=memory_id, withdrawn=[WithdrawnMessage.of(w) for w in withdrawn]
    )
    return JSONResponse(body.model_dump(mode="json"))


@router.get(
    "/v1/instances/{instance_id}/messages",
    response_model=Page[MessageOut],
    responses={200: {"content": {"application/jsonl": {}}}},
)
def list_messages(
    instance_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    conversation: ConversationLog,
    caught_up: ConversationCaughtUp,
    limit: Limit = 50,
    cursor: Cursor = None,
    format: Annotated[
        Literal["alma", "sillytavern"],
        Query(description="sillytavern: the whole conversation as a SillyTavern chat file"),
    ] = "alma",
    order: Annotated[
        Literal["oldest", "newest"],
        Query(description="newest: the latest first, each page further back (a chat view)"),
    ] = "oldest",
) -> Page[MessageOut] | Response:
    """The conversation, oldest first (or newest first): imported turns, the user's messages
    and the replies."""
    instance = app.owned(Instance, caller.tenant, instance_id, None)
    caught_up()
    if format == "sillytavern":
        said = _whole_conversation(conversation, instance_id)
        users = [m.name for m in said if m.role == "user" and m.name]
        user = max(set(users), key=users.count) if users else "User"
        return Response(
            write_chat_file(said, user, instance.name),
            media_type="application/jsonl",
            headers={"Content-Disposition": f'attachment; filename="{instance_id}.jsonl"'},
        )
    if order == "newest":
        before = MAX_POSITION if cursor is None else decode_cursor(cursor)
        messages = conversation.messages_before(instance_id, before, limit)
    else:
        messages = conversation.messages(instance_id, decode_cursor(cursor), limit)
    next_cursor = encode_cursor(messages[-1].position) if len(messages) == limit else None
    return Page[MessageOut](items=[MessageOut.of(m) for m in messages], next_cursor=next_cursor)


def _whole_conversation(conversation: Conversation, instance_id: UUID) -> list[Message]:
    said: list[Message] = []
    while True:
        page = conversation.messages(instance_id, said[-1].position if said else 0, 1000)
        said += page
        if len(page) < 1000:
            return said


@router.post(
    "/v1/instances/{instance_id}/messages",
    status_code=201,
    openapi_extra=BODIES,
    dependencies=[RetrySafe],
)
async def import_messages(
    instance_id: UUID, request: Request, caller: CurrentCaller, app: AlmaApp
) -> MessagesImported:
    """Past turns, as they were (no model is called): alma's JSON, or a SillyTavern chat file
    (`.jsonl`) uploaded as the form field `file`, its speakers and send dates kept."""
    messages = await messages_sent(request)
    ids = await run_in_threadpool(
        app.import_messages, caller.tenant, instance_id, messages, caller.actor
    )
    return MessagesImported(ids=ids)
