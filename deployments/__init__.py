"""Deployment definitions (schedules, work pool, parameters) and `bertflow deploy`."""
