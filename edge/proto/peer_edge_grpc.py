import purerpc
from edge.proto import peer_edge_pb2 as giggityflix_dot_edge_dot_v1_dot_peer_edge__pb2


class PeerEdgeServiceServicer(purerpc.Servicer):
    async def Connect(self, input_messages):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "giggityflix.edge.v1.PeerEdgeService"
        )
        service_obj.add_method(
            "Connect",
            self.Connect,
            purerpc.RPCSignature(
                purerpc.Cardinality.STREAM_STREAM,
                giggityflix_dot_edge_dot_v1_dot_peer_edge__pb2.PeerMessage,
                giggityflix_dot_edge_dot_v1_dot_peer_edge__pb2.EdgeMessage,
            )
        )
        return service_obj


class PeerEdgeServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "giggityflix.edge.v1.PeerEdgeService",
            channel
        )
        self.Connect = self._client.get_method_stub(
            "Connect",
            purerpc.RPCSignature(
                purerpc.Cardinality.STREAM_STREAM,
                giggityflix_dot_edge_dot_v1_dot_peer_edge__pb2.PeerMessage,
                giggityflix_dot_edge_dot_v1_dot_peer_edge__pb2.EdgeMessage,
            )
        )