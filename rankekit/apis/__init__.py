"""Programmatic entry points shared by tools/*.py and the ``rankekit`` CLI."""
