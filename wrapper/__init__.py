"""prism.wrapper"""

import prism.fabric  # noqa: F401  (first: it sets gRPC's engine before gRPC loads)
