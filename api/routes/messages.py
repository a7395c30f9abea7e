"""One message of an instance's conversation: a reply comes with what it was built from."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from alma.api.deps import AlmaApp, ConversationCaughtUp, ConversationLog, CurrentCaller
from alma.api.reply_schemas import MessageDetail
from alma.chat.built_from import built_from
from alma.domain import Instance, NotFound

router = APIRouter(tags=["memories"])


@router.get("/v1/instances/{instance_id}/messages/{message_id}")
def get_message(
    instance_id: UUID,
    message_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    conversation: ConversationLog,
    caught_up: ConversationCaughtUp,
) -> MessageDetail:
    """The message as the conversation lists it; a chat reply's `built_from` says what its
    prompt held: the memories recalled (as they were then, their score, what became of them),
    the lorebook entries, the model and the tokens."""
    app.owned(Instance, caller.tenant, instance_id, None)
    caught_up()
    found = conversation.by_ids(instance_id, [str(message_id)]).get(str(message_id))
    if found is None:
        raise NotFound(f"instance {instance_id} has no message {message_id}")
    event = app.said_at(caller.tenant, instance_id, found.position)
    replied = type(event) is Instance.ReplyRecorded
    built = built_from(app, conversation, caller.tenant, event) if replied else None
    return MessageDetail.built(found, built)
