"""Trunk8's common library: settings, data-file models, wire types, NATS and HTTP helpers.

Services and the `trunk8` command import from here; this package never imports a service.
"""
