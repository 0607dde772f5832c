"""A process that only receives a bootstrap: the transport's part of the
2nd driver's bootstrap, measured in the same run (benchmark/run.py).

It connects exactly as PrismDriver does (the driver's own Link: its channel
options, TLS, the Challenge/Hello handshake, grpc.aio on an event loop),
subscribes from scratch, and reads frames until the one that commits the
bootstrap, parsing each (protobuf) only to find that one: nothing is
verified, decrypted, decoded or applied. Its rows/s is what gRPC and TLS
deliver to one asyncio process here; the driver's bootstrap does all of this
and then opens and applies every frame on the same event loop, so it cannot
be faster. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TENANT, driver_tls

from prism.driver import DriverConfig
from prism.driver.link import Link
from prism.driver.subscription import SUBSCRIBE_METHOD
from prism.fabric import FRAME_FORMAT_VERSION
from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc


async def receive(args: argparse.Namespace) -> dict[str, Any]:
    cfg = DriverConfig(
        wrapper_host="127.0.0.1",
        wrapper_port=args.port,
        tenant_id=TENANT,
        secret_file=args.secret,
        **driver_tls(Path(args.ca) if args.ca else None),
    )
    link = Link(cfg)
    async with link.channel() as channel:
        login = await link.handshake(pb_grpc.WrapperServiceStub(channel))
        subscribe = channel.unary_stream(
            SUBSCRIBE_METHOD,
            request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=None,  # raw bytes, as the driver reads them
        )
        request = pb.SubscribeRequest(
            tenant_id=cfg.tenant_id,
            session=login.hello.session,
            subscription=os.urandom(16),
            max_frame_rows=cfg.max_frame_rows,
            frame_format=FRAME_FORMAT_VERSION,
        )
        u0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        call = subscribe(login.signed(request))
        rows = frames = nbytes = 0
        while True:
            raw = await asyncio.wait_for(call.read(), args.timeout)
            if not isinstance(raw, bytes):
                raise SystemExit("the wrapper ended the stream before the bootstrap committed")
            frame = pb.Frame.FromString(raw)
            rows += frame.count
            frames += 1
            nbytes += len(raw)
            if frame.commit_position:
                break
        seconds = time.perf_counter() - t0
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        call.cancel()
    return {
        "rows": rows,
        "frames": frames,
        "bytes": nbytes,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "mb_per_s": nbytes / seconds / 1e6,
        "user_s": round(u1.ru_utime - u0.ru_utime, 3),
        "system_s": round(u1.ru_stime - u0.ru_stime, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--ca", help="the CA of the wrapper's TLS certificate (none: plaintext)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per frame")
    args = p.parse_args()
    print(json.dumps(asyncio.run(receive(args))), flush=True)


if __name__ == "__main__":
    main()
