"""HTTP/REST transport: the Open Inference Protocol (KServe v2 REST with Triton's binary tensor
extension) and a plain image endpoint, served by aiohttp on the gRPC server's event loop."""
