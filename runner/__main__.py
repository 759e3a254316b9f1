"""`python -m runner prepare ...`: the runner's command line (host side; the sandbox never runs it)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from easyfaas.logging import setup_logging
from runner.prepare import PrepareError, prepare


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner", description="EasyFaaS sandbox runner tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the language runtimes and the sandbox root skeleton")
    p.add_argument("--runtime-dir", default="/var/faas/runtime", help="where runtimes go (default %(default)s)")
    p.add_argument("--rootfs-dir", default="/var/faas/runner/rootfs",
                   help="sandbox root skeleton (default %(default)s)")
    p.add_argument("--python", default=None, help="interpreter of the Python runtimes (default: this one)")
    p.add_argument("--node", default=None, help="node binary (default: node on PATH)")
    p.add_argument("--uid-base", type=int, default=20000, help="first sandbox uid (default %(default)s)")
    p.add_argument("--uid-count", type=int, default=64, help="number of sandbox uids (default %(default)s)")
    p.add_argument("--log-format", default="console", choices=("console", "json"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(level="info", fmt=args.log_format, daemon="runner")
    if args.command == "prepare":
        try:
            prepare(args.runtime_dir, args.rootfs_dir, python=args.python, node=args.node,
                    uid_base=args.uid_base, uid_count=args.uid_count)
        except (PrepareError, OSError) as exc:
            print(f"runner prepare: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
