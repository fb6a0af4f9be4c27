"""Peer programs the service is benchmarked against (same input, same endpoint, same verdicts).

Each runs as ``python -m bench.peers.<name> --bootstrap HOST:PORT --input TOPIC --output TOPIC
--group GROUP --endpoint URL [--concurrency N]``, prints ``ready`` once it is consuming and exits 0
on SIGTERM/SIGINT. Only the consume/call/produce loop differs between them; the CLI, the verdict
rule and the SDK settings live in :mod:`bench.peers._common`.
"""
