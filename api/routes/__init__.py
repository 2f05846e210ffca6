"""The API's routes, one module per resource, all mounted under ``/v1`` by :mod:`api.main`."""
