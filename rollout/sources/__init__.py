"""Prompt sources over finite data: local files (through `datasets`) and reasoning-gym tasks."""
