"""Per-application state built in the lifespan: settings, pool and what the database offers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from api.db import ApiPool, AsyncConn
from api.live.broker import BrokerLink
from api.live.hub import Hub
from api.live.statuslog import StatusLog
from api.queries.meta import DatabaseFeatures, load_features
from api.viewcache import FingerprintCache, ViewCache
from cityneuron.settings import Settings

log = logging.getLogger("cityneuron.api")


@dataclass(slots=True)
class ApiState:
    settings: Settings
    pool: ApiPool
    features: DatabaseFeatures | None = field(default=None)
    # Live streams fan out from the hub; the broker link feeds it and publishes commands
    # (None until the lifespan starts it).
    hub: Hub = field(default_factory=Hub)
    broker: BrokerLink | None = field(default=None)
    # Shared views (district summary, city overview, the city views without `at`), rendered once
    # per api.shared_view_max_age_ms.
    views: ViewCache = field(default_factory=lambda: ViewCache(0))
    # Latest reading of one device, rendered once per api.latest_max_age_ms.
    device_views: ViewCache = field(default_factory=lambda: ViewCache(0))
    # /latest items by (kind, district), reused while the data's fingerprint stands.
    latest_items: FingerprintCache = field(default_factory=FingerprintCache)
    # Devices not online and their changes, for /map/states?since=.
    device_states: StatusLog = field(default_factory=StatusLog)

    async def database_features(self, conn: AsyncConn) -> DatabaseFeatures:
        """TimescaleDB and continuous aggregates: detected once (at startup, or on the first
        request when the database was down at startup)."""
        if self.features is None:
            self.features = await load_features(conn)
            log.info(
                "database: PostgreSQL %s, TimescaleDB %s, %d continuous aggregates",
                self.features.info.server_version,
                self.features.info.timescaledb or "absent",
                len(self.features.continuous_aggregates),
            )
        return self.features
