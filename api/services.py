"""The composition root: builds the application, the read models and their followers."""

from __future__ import annotations

from dataclasses import dataclass

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment

from domain import Alma
from projections import Follower, Listings, ListingView, PostgresListingView, SQLiteListingView
from settings import Settings


@dataclass
class Services:
    settings: Settings
    app: Alma
    listings: Follower

    def start_projections(self) -> None:
        """Follow the log in this process (the embedded default; `alma worker` otherwise)."""
        self.app.listeners.append(self.listings.wake)
        self.listings.start()

    def close(self) -> None:
        self.listings.stop()
        self.listings.view.close()
        self.app.close()


def build_services(settings: Settings) -> Services:
    app = Alma(settings.event_store_env("events"))
    return Services(settings=settings, app=app, listings=_follower(app, settings))


def _follower(app: Alma, settings: Settings) -> Follower:
    env = settings.event_store_env(Listings.name)
    view_class: type[ListingView] = (
        PostgresListingView if "POSTGRES_DBNAME" in env else SQLiteListingView
    )
    factory = InfrastructureFactory.construct(Environment(Listings.name, env))
    view = factory.tracking_recorder(view_class)
    assert isinstance(view, ListingView)
    return Follower(app, Listings(view=view))
