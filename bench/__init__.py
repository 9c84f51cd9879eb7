"""The benchmark: nomad-pginit against the psql script it replaces, and against the floor.

Run it with ``.venv/bin/python -m bench`` (``--n 1000``, ``--repeat K``, ``--quick``,
``--json PATH``; ``make bench BENCH_ARGS="--n 1000"``). It starts its own throwaway
PostgreSQL clusters and OpenBao dev server and leaves nothing behind.

- ``lab``: the servers, the services' secrets and files, the tool run as a real process;
- ``reference``: the seed's psql script, rendered and run with ``psql -f``;
- ``measure``: every measurement, and the checks that each one measured what it claims;
- ``table``: the targets, the table and the JSON;
- ``machine``: what the figures were measured on.
"""
