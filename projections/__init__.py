"""Read models that follow the event log, split into partitions: the listings, the memory index,
the conversation and the memory audit."""

from alma.projections.audit import AuditEntry, MemoryAudit
from alma.projections.conversation import Conversation, Message
from alma.projections.follower import Follower, Later, PartitionLag, ReadModel
from alma.projections.listings import Listed, Listings
from alma.projections.memory_docs import Doc, Period
from alma.projections.memory_index import MemoryIndex
from alma.projections.memory_search import Hit
from alma.projections.skips import Skipped, Skips
from alma.projections.sql_model import SqlReadModel
from alma.projections.vectors import VectorIndex, open_chroma

__all__ = [
    "AuditEntry",
    "Conversation",
    "Doc",
    "Follower",
    "Hit",
    "Later",
    "Listed",
    "Listings",
    "MemoryAudit",
    "MemoryIndex",
    "Message",
    "PartitionLag",
    "Period",
    "ReadModel",
    "Skipped",
    "Skips",
    "SqlReadModel",
    "VectorIndex",
    "open_chroma",
]
