"""Fixtures for the review console tests (defined in namus_edge_testing.review, a uniquely named package)."""

from namus_edge_testing.mosquitto import mosquitto, mosquitto_factory  # noqa: F401 - fixtures re-exported
from namus_edge_testing.postgres import postgres_cluster  # noqa: F401 - fixture re-exported
from namus_edge_testing.review import console_factory, db_url, event_factory, operator_bundle  # noqa: F401 - fixtures re-exported
