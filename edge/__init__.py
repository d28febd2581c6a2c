"""namus-edge device runtime: sources, pipeline, tracker, matcher, alerts, service."""
