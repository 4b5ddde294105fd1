"""The ``/sdapi/v1`` routes, grouped by what they do."""
