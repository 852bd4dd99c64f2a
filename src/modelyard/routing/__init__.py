"""Routing: choose, per request, the cheapest tier that is good enough.

Offline, `data` reads recorded outcomes (which prompts a weak and a strong
model answered well), `learned` trains a router on them and `evaluate`
measures any router's quality against the share of strong calls it makes.
"""
