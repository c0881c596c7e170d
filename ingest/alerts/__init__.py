"""Threshold and silence alerts evaluated in the ingest stream (docs/alerts.md).

:mod:`ingest.alerts.rules` reads the rules file, :mod:`ingest.alerts.engine` evaluates batches with
hysteresis, :mod:`ingest.alerts.store` keeps the ``alerts`` table and runs the silence check.
"""

from __future__ import annotations

from ingest.alerts.engine import AlertEngine, Transition
from ingest.alerts.rules import RulesError, RuleSet, ThresholdRule, load_rules

__all__ = ["AlertEngine", "RuleSet", "RulesError", "ThresholdRule", "Transition", "load_rules"]
