"""The reviewer console: every candidate match reviewed by a person, verdicts fed back to the fleet.

Modules: ``events`` parses match events v1 and v2, ``db`` holds the SQLAlchemy tables and runs
the Alembic migrations, ``store`` is the storage API (events, items, verdicts, audit, users,
tokens), ``ingest`` subscribes to MQTT, ``feedback`` publishes verdicts and suppressions,
``homeassistant`` publishes discovery, ``retention`` purges crops, ``metrics`` computes the
metrics page, ``casebook`` reads the operator bundle's case photos, ``web`` is the FastAPI app,
``service`` wires them for ``namus-edge review serve``. Nothing below this layer imports it.
"""
