"""Helpers shared by every step: configuration, dates, Spark session, storage."""
