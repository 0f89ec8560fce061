"""``genrec serve``: a trained recommender over HTTP (FastAPI + uvicorn; endpoints in :mod:`genrec.serve`).

    genrec serve runs/beauty --port 8000
    curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"history": ["B0009RF9DW"], "k": 5}'

``RUN_DIR`` is a finished recipe run or a directory written by ``Recommender.save_pretrained``.
The server stops on Ctrl-C or SIGTERM, answering the requests it holds first.
"""

import argparse
import math
import socket

from genrec.errors import ConfigError, GenrecError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="RUN_DIR", help="a finished recipe run directory or a saved recommender")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--method", default=None, help="fusion method, 'joint', 'sasrec' or 'generative' "
                   "(default: the saved one / the run's primary: fusion.primary, or the one chosen on "
                   "validation when it is auto)")
    p.add_argument("--max-batch", type=int, default=64, help="most histories answered by one model call (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long the first queued request waits for others to share its model call (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")


def _check(args: argparse.Namespace) -> None:
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"argument --port: must be between 1 and 65535, got {args.port}")
    for name in ("max_batch", "threads", "max_body_bytes"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"argument --{name.replace('_', '-')}: must be >= 1, got {v}")
    if not math.isfinite(args.max_wait_ms) or args.max_wait_ms < 0:
        raise ConfigError(f"argument --max-wait-ms: must be a number >= 0, got {args.max_wait_ms}")
    from genrec.serve import REQUEST_TIMEOUT_S

    if args.max_wait_ms >= REQUEST_TIMEOUT_S * 1000.0:  # every request would time out while its batch gathers
        raise ConfigError(f"argument --max-wait-ms: must be below {REQUEST_TIMEOUT_S * 1000.0:g} (a request waits "
                          f"{REQUEST_TIMEOUT_S:g} s for its answer), got {args.max_wait_ms:g}")


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket for uvicorn, so that a taken port or a bad host is a one-line error here."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise GenrecError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from genrec.recommender import Recommender
    from genrec.serve import REQUEST_TIMEOUT_S, create_app

    _check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    rec = Recommender.from_pretrained(args.path, method=args.method)
    app = create_app(rec, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_body_bytes=args.max_body_bytes)
    sock = _listen(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {rec.method_name} ({rec.num_items} items) from {args.path} on http://{host}:{args.port} "
          f"(Ctrl-C to stop)", flush=True)
    # log_config=None: uvicorn's messages follow genrec's console policy instead of its own handlers
    # shutdown waits for the model calls in flight as long as a request waits for its answer (after 10 s
    # uvicorn cancelled them: a plain-text 500 instead of an answer or the JSON 503)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, timeout_keep_alive=5,
                                           timeout_graceful_shutdown=int(REQUEST_TIMEOUT_S) + 5))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
