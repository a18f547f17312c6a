"""Generated protobuf/gRPC stubs of the synthrad v1 API (``protos/synthrad/v1/*.proto``).

Import them as ``from services.gateway.stubs import common_pb2, generator_pb2_grpc``. The ``*_pb2*.py`` /
``*.pyi`` files are generated and committed; regenerate them with ``python -m services.gateway.stubs.generate``
(or ``scripts/gen_protos.sh``) after editing a .proto; a test checks they are fresh. This package imports
nothing of the gateway, so clients (``synthrad``, tests, benchmarks) can use it without the server's code.
"""
