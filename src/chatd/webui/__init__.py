"""The chat page at ``/``: static files from package data, served by the same app.

Plain ES modules and CSS with vendored libraries (``static/vendor``, see its
manifest.json), so nothing is built at install time. ``routes.install`` mounts it.
"""
