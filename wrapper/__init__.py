"""prism.wrapper"""

import prism.fabric.grpc_engine  # noqa: F401  (first: gRPC loads on prism's engine)
