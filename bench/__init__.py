"""Benchmarks. Each one runs the mesh and a hand-written raw nats-py baseline of the same
work in one process run, against one fresh embedded nats-server, and prints the ratio.

`python -m bench` runs them all; `python -m bench --help` lists the knobs.
"""
