"""The composition root: builds the application, the read models and their followers."""

from __future__ import annotations

from dataclasses import dataclass

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment

from domain import Alma
from embeddings import Embedder
from projections import (
    Follower,
    Listings,
    ListingView,
    MemoryIndex,
    PostgresListingView,
    SQLiteListingView,
    VectorIndex,
    open_chroma,
    open_store,
)
from settings import Settings


@dataclass
class Services:
    settings: Settings
    app: Alma
    listings: Follower
    memory: Follower

    @property
    def followers(self) -> list[Follower]:
        return [self.listings, self.memory]

    @property
    def listings_view(self) -> ListingView:
        listings = self.listings.model
        assert isinstance(listings, Listings)
        return listings.view

    @property
    def memory_index(self) -> MemoryIndex:
        index = self.memory.model
        assert isinstance(index, MemoryIndex)
        return index

    def start_projections(self) -> None:
        """Follow the log in this process (the embedded default; `alma worker` otherwise).
        The embedding model is loaded first, so the index does not start out lagging."""
        self.memory_index.embedder.load()
        for follower in self.followers:
            self.app.listeners.append(follower.wake)
            follower.start()

    def close(self) -> None:
        for follower in self.followers:
            follower.stop()
        self.listings_view.close()
        self.memory_index.close()
        self.app.close()


def open_app(settings: Settings) -> Alma:
    return Alma(settings.event_store_env("events"))


def build_services(settings: Settings) -> Services:
    app = open_app(settings)
    return Services(
        settings=settings,
        app=app,
        listings=Follower(app, _listings(settings)),
        memory=Follower(app, build_memory_index(settings)),
    )


def build_memory_index(settings: Settings, generation: int | None = None) -> MemoryIndex:
    return MemoryIndex(
        open_store(settings.event_store_env("memory")),
        VectorIndex(open_chroma(settings)),
        Embedder(settings.embedding_model),
        pinned_generation=generation,
    )


def rebuild_memory_index(services: Services) -> int:
    """Builds a new generation of the index beside the serving one, switches readers and
    followers to it, then drops the old one. Returns the new generation."""
    serving = services.memory_index
    generation = max([serving.generation, *serving.generations()]) + 1
    builder = build_memory_index(services.settings, generation)
    try:
        Follower(services.app, builder).catch_up()
        previous = serving.switch_to(generation)
    finally:
        builder.close()
    serving.drop(previous)
    return generation


def _listings(settings: Settings) -> Listings:
    env = settings.event_store_env(Listings.name)
    view_class: type[ListingView] = (
        PostgresListingView if "POSTGRES_DBNAME" in env else SQLiteListingView
    )
    factory = InfrastructureFactory.construct(Environment(Listings.name, env))
    view = factory.tracking_recorder(view_class)
    assert isinstance(view, ListingView)
    return Listings(view=view)
