"""Generated protobuf (`peer_edge_pb2`) and purerpc (`peer_edge_grpc`) code for `proto/`.

Do not edit the generated modules; change `proto/` and run `python proto/regen.py`.
"""

from edge.proto import peer_edge_pb2 as pb

SERVICE_NAME = "giggityflix.edge.v1.PeerEdgeService"
CONNECT_PATH = f"/{SERVICE_NAME}/Connect"

__all__ = ["CONNECT_PATH", "SERVICE_NAME", "pb"]
