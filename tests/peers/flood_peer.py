"""A flooding peer in a process of its own (a real grpcio client over TLS), so that the cost of producing
the flood lands on another interpreter, as it would on an attacker's machine, not on the edge's.

    python -m tests.peers.flood_peer --port P --root ca.pem --peer-id X --messages N

Registers, prints `registered`, waits for a line on stdin, sends N messages as fast as grpcio takes them,
and prints the call's final status as one JSON line: {"code": ..., "details": ..., "sent": ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

import grpc

from edge.proto import CONNECT_PATH, pb


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--peer-id", required=True)
    parser.add_argument("--messages", type=int, required=True)
    args = parser.parse_args()
    with open(args.root, "rb") as handle:
        credentials = grpc.ssl_channel_credentials(root_certificates=handle.read())
    sent = 0
    go = threading.Event()

    def requests():
        nonlocal sent
        yield pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name=args.peer_id))
        go.wait()
        for n in range(args.messages):
            sent += 1
            yield pb.PeerMessage(request_id=f"flood-{n}", file_hash_response=pb.FileHashResponse(catalog_uuid="c"))

    with grpc.secure_channel(f"localhost:{args.port}", credentials) as channel:
        connect = channel.stream_stream(
            CONNECT_PATH, request_serializer=pb.PeerMessage.SerializeToString, response_deserializer=pb.EdgeMessage.FromString
        )
        call = connect(requests())
        first = next(call)
        assert first.registration_response.success, first.registration_response.error_message
        print("registered", flush=True)
        sys.stdin.readline()
        go.set()
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass
        print(json.dumps({"code": call.code().name, "details": call.details(), "sent": sent}), flush=True)


if __name__ == "__main__":
    main()
