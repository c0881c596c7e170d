"""CityNeuron HTTP API: devices, readings and aggregates over the ingest database.

Entry points: :func:`api.app.create_app` builds the FastAPI application from a ``Settings``;
:func:`api.main.run` serves it with uvicorn.
"""
