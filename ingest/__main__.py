"""``python -m ingest``: run ingest with settings from the environment (CITYNEURON_..., ``__`` nesting)."""

from __future__ import annotations

import logging
import sys

from cityneuron.errors import CityNeuronError
from cityneuron.settings import Settings
from ingest.service import run


def main() -> int:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        run(settings)
    except CityNeuronError as exc:
        logging.getLogger("cityneuron.ingest").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
