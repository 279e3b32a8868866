#!/usr/bin/env python3
"""Looks at a running suite as an outside user would, with the standard
Python gRPC stack (grpcio, grpcio-reflection, grpcio-health-checking) and no
code generated from our contracts: list services by reflection, check
health, call GetServiceInfo with and without a credential.

pip install grpcio grpcio-reflection grpcio-health-checking
usage: scripts/grpc_check.py [host:port] [token]
"""
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
token = sys.argv[2] if len(sys.argv) > 2 else None
channel = grpc.insecure_channel(target)

db = ProtoReflectionDescriptorDatabase(channel)
services = db.get_services()
print("services:", ", ".join(services))
pool = descriptor_pool.DescriptorPool(db)

health = health_pb2_grpc.HealthStub(channel)
for s in [s for s in services if s.startswith("loyalty.")] + [""]:
    resp = health.Check(health_pb2.HealthCheckRequest(service=s))
    print(f"health {s or '(server)'}: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}")

method = pool.FindMethodByName("loyalty.rewards.v1.RewardsService.GetServiceInfo")
req_cls = message_factory.GetMessageClass(method.input_type)
resp_cls = message_factory.GetMessageClass(method.output_type)
call = channel.unary_unary(
    "/loyalty.rewards.v1.RewardsService/GetServiceInfo",
    request_serializer=req_cls.SerializeToString,
    response_deserializer=resp_cls.FromString,
)
try:
    call(req_cls())
    print("without credential: unexpectedly OK")
except grpc.RpcError as e:
    print(f"without credential: {e.code().name}: {e.details()}")
if token:
    resp, c = call.with_call(req_cls(), metadata=[("authorization", f"Bearer {token}")])
    rid = dict(c.initial_metadata()).get("x-request-id")
    print(f"with credential: {resp}".strip(), f"(x-request-id {rid})")
