"""``python -m facefleet.component``: the process the recipe's Run step starts."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from facefleet.component.swap import one_line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m facefleet.component", description=__doc__)
    p.add_argument("--work", required=True, help="work folder: gallery and spool ({work:path})")
    p.add_argument("--artifacts", help="artifacts folder, relative model paths resolve here ({artifacts:path})")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from facefleet.component.service import Component

    try:
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

        ipc = GreengrassCoreIPCClientV2()
    except KeyError:
        sys.stderr.write("facefleet: error: not running inside Greengrass (no IPC socket); use `facefleet run --config`\n")
        return 1
    except Exception as e:  # the socket is there but the nucleus refused or did not answer
        sys.stderr.write(f"facefleet: error: cannot connect to the Greengrass nucleus over IPC: {one_line(e)}\n")
        return 1
    comp = Component(ipc, args.work, args.artifacts)
    signal.signal(signal.SIGTERM, lambda *_: comp.request_stop())
    try:
        comp.start()  # any failure: ERRORED reported, one line logged, FacefleetError raised
    except Exception as e:
        if os.environ.get("FACEFLEET_DEBUG"):
            raise
        sys.stderr.write(f"facefleet: error: {one_line(e)}\n")
        return 1
    try:
        comp.wait()
    finally:
        comp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
