"""The application layer: wires the domains into use cases every front end can call.

`build_services` makes the container, `jobs` holds the job-handler registry and the
worker, `idempotent` runs a write at most once per idempotency key, `events` connects
each domain's published outcomes to the higher domain that reacts to them, and
`usecases` holds what front ends call (its docstring states the convention). Nothing in
here imports FastAPI: the HTTP API, and later MCP and the CLI, sit on top.
"""
