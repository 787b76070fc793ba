"""Python client for Glimpse's gRPC API.

`Client` wraps the generated stubs of `glimpse.v1.Generation` (in `glimpse_client.v1`); `KvCache`
names a per-request KV eviction policy. The raw messages stay available as `glimpse_client.pb`.
"""

from glimpse_client.client import Client, Completion, KvCache
from glimpse_client.v1 import generation_pb2 as pb
from glimpse_client.v1 import generation_pb2_grpc as pb_grpc

__all__ = ["Client", "Completion", "KvCache", "pb", "pb_grpc"]
