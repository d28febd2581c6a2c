"""Alembic migrations of the review database (run by ``namus_edge.review.db.upgrade``)."""
