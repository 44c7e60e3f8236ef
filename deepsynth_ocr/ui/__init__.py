"""The local jobs web UI (``deepsynth-ocr ui``): launch, watch, stop, resume and compare runs from a browser.

FastAPI + Jinja2 templates + server-sent events + a little plain JavaScript, no build step. The state is
the run directories themselves (through ``runs``) plus a small queue on disk, so runs started from the
CLI or a notebook show up too and everything survives a restart of the UI server.
"""
