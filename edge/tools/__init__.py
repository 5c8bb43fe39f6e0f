"""The operator tools behind `python -m edge peer-sim | send-command | tail` (edge.cli parses their
arguments): clients of an edge, never part of one. Nothing in the edge imports them but edge.cli.

    peer_sim.py      simulated peers, for demos, smoke tests and load
    grpc_client.py   a small Trio gRPC client over h2 (sans-IO): many streams, little memory
    send_command.py  one command onto an edge's command topic
    tail.py          follow the edge's topics, readably or as JSON lines
"""
