"""``vqclip serve``: the HTTP server (``vqclip.serving``) on uvicorn, until SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import sys

from vqclip.cli._common import add_model_args, positive_int, user_path

__all__ = ["add_parser"]


def _index_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    from vqclip.index.reader import is_milvus_target

    return name, path if is_milvus_target(path) else user_path(path)


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve embeddings, classification and search over HTTP",
                       description="Run the HTTP server: /v1/embed/text, /v1/embed/image, /v1/classify, /v1/search, "
                                   "a web page at /, OpenAPI at /docs, /metrics for Prometheus. Settings come from "
                                   "--config FILE (YAML or JSON, the names of vqclip.serving.config.ServerConfig), "
                                   "then these flags.")
    add_model_args(p)
    p.add_argument("--index", action="append", type=_index_arg, default=[], metavar="NAME=PATH",
                   help="serve the index at PATH as NAME (repeat for several); PATH may be a milvus:// target "
                        "made by `vqclip index export-milvus`")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch", type=positive_int, default=None, help="items per backend call (default 32; "
                   "1 turns batching off)")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="longest the first queued item waits for a fuller batch (default 2)")
    p.add_argument("--max-queue", type=positive_int, default=None,
                   help="items waiting per queue before 503 (default 512)")
    p.add_argument("--timeout", type=float, default=None, dest="timeout_s", metavar="SECONDS",
                   help="per-request deadline (default 30)")
    p.add_argument("--api-key-file", default=None, type=user_path, metavar="FILE",
                   help="require 'Authorization: Bearer KEY' with a key from FILE (one per line, 'name:key' or 'key')")
    p.add_argument("--rate-limit", type=float, default=None, metavar="PER_S",
                   help="requests per second per key (per client address without keys); default off")
    p.add_argument("--cors-origin", action="append", default=None, dest="cors_origins", metavar="ORIGIN",
                   help="allow browser calls from ORIGIN (repeat); default: no CORS")
    p.add_argument("--log-level", default=None, choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default info; debug also logs each request)")
    p.add_argument("--generation-jobs", type=int, default=None, metavar="N",
                   help="generation jobs stepped together (default 4; 0 turns generation off)")
    p.add_argument("--generation-vqgan", default=None, type=user_path, metavar="NAME|PATH",
                   help="the VQGAN of generation jobs (default: the bundled shapes-vqgan)")
    p.add_argument("--generation-backend", default=None, type=str.lower, choices=["torch", "onnxruntime"],
                   help="torch (autograd; default) or onnxruntime: steps run the exported step graph, no autograd")
    p.add_argument("--generation-step-graph", default=None, type=user_path, metavar="DIR",
                   help="with --generation-backend onnxruntime: a folder from `vqclip export CLIP --generation`")
    p.add_argument("--generation-out", default=None, type=user_path, metavar="DIR",
                   help="also write each job's result PNG and sidecar here (default: kept in memory)")
    p.add_argument("--trust-request-id", action="store_true", default=None,
                   help="take the X-Request-Id a load balancer sets as a new generation job's id, so it can "
                        "route the job's requests by it (see the README's nginx example)")
    p.add_argument("--config", default=None, type=user_path, metavar="FILE",
                   help="YAML or JSON file of server settings")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from vqclip.serving.config import ServerSetupError, is_loopback, load_config

    overrides = {k: getattr(args, k) for k in ("model", "arch", "backend", "precision", "device", "host", "port",
                                               "max_batch", "max_wait_ms", "max_queue", "timeout_s", "api_key_file",
                                               "rate_limit", "cors_origins", "log_level", "generation_jobs",
                                               "generation_vqgan", "generation_out", "trust_request_id",
                                               "generation_backend", "generation_step_graph")}
    cfg = load_config(args.config, overrides)
    if args.index:
        cfg.indexes = {**cfg.indexes, **dict(args.index)}
        cfg.validate()
    try:
        from vqclip.serving.app import create_app, serve
    except ImportError as e:
        raise ServerSetupError(f"the server needs the 'server' extra ({e.name} is missing): "
                               f"pip install 'vqclip[server]'") from e
    if not is_loopback(cfg.host) and not cfg.api_key_file:
        print(f"vqclip: warning: serving on {cfg.host} without API keys: anyone who can reach the port can use it "
              f"(pass --api-key-file)", file=sys.stderr)
    app = create_app(cfg)  # loads the model and indexes: a bad one fails here, in one line, before binding
    serve(app, cfg.host, cfg.port, log_level=cfg.log_level, graceful_timeout_s=cfg.graceful_timeout_s,
          max_connections=cfg.max_connections)
    return 0
