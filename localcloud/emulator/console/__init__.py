"""The emulator's web console: a Starlette app (app.py) served by uvicorn in the emulator's process (server.py),
over read-only views of the core's state (reads.py), with a static page (static/) that needs nothing from outside.
"""
