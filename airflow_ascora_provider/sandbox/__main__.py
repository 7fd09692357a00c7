"""``python -m airflow_ascora_provider.sandbox`` / ``ascora-sandbox``: make and serve fake tenants.

Why a CLI: demos, benchmarks and manual poking all need the same two things - a deterministic tenant
on disk and an emulator serving it - without writing Python::

    ascora-sandbox generate --out /tmp/tenant --size 5000 --seed 42 [--dirty] [--format xlsx|csv]
    ascora-sandbox serve ascora --port 8081 --tenant /tmp/tenant [--rate-limit 120] [--api-key KEY]
    ascora-sandbox serve twenty --port 8082 [--rate-limit 100] [--api-key KEY]
    ascora-sandbox serve salesforce|dataverse|freshsales|zoho --port N (the other CRM emulators)

The emulator modules are imported only when ``serve`` runs, so ``generate`` works without the web
stack and a broken emulator cannot break tenant generation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path

#: CRM emulators ``serve`` knows: name -> (module with ``create_app(api_key=, rate_limit=)``, help).
#: A new destination's emulator is one more line here.
CRM_EMULATORS: dict[str, tuple[str, str]] = {
    "twenty": ("airflow_ascora_provider.sandbox.twenty", "the Twenty CRM emulator"),
    "dataverse": ("airflow_ascora_provider.sandbox.dataverse", "the Dataverse (Dynamics 365 Sales) emulator, https"),
    "zoho": ("airflow_ascora_provider.sandbox.zoho", "the Zoho CRM v8 emulator (api_key = the refresh token)"),
    "salesforce": ("airflow_ascora_provider.sandbox.salesforce", "the Salesforce org emulator, https (api_key = session id)"),
    "freshsales": ("airflow_ascora_provider.sandbox.freshsales", "the Freshsales emulator (Growth plan limits)"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ascora-sandbox", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write a deterministic synthetic Ascora tenant")
    gen.add_argument("--out", required=True, help="tenant directory to write (created if missing)")
    gen.add_argument(
        "--size", type=int, default=500, help="approximate total number of records (default 500)"
    )
    gen.add_argument("--seed", type=int, default=42, help="random seed; same seed+size+dirty = same bytes")
    gen.add_argument(
        "--dirty", action="store_true", help="inject real-world mess, listed in dirty_manifest.json"
    )
    gen.add_argument(
        "--format",
        action="append",
        choices=("xlsx", "csv"),
        default=[],
        help="also write Ascora-style exports under <out>/exports (repeatable)",
    )

    serve = sub.add_parser("serve", help="serve an emulator over HTTP (uvicorn)")
    which = serve.add_subparsers(dest="target", required=True)
    ascora = which.add_parser("ascora", help="the Ascora REST API emulator over a generated tenant")
    ascora.add_argument("--tenant", required=True, help="tenant directory written by `generate`")
    crms = [which.add_parser(name, help=help_) for name, (_, help_) in CRM_EMULATORS.items()]
    for p in (ascora, *crms):
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument(
            "--rate-limit", type=int, default=None, help="requests per minute per key (429 beyond)"
        )
        p.add_argument("--api-key", default=None, help="key clients must send (default: the emulator's own)")
    return parser


def _generate(args: argparse.Namespace) -> int:
    from airflow_ascora_provider.sandbox.generate import generate_tenant

    started = time.perf_counter()
    generate_tenant(
        args.out, size=args.size, seed=args.seed, dirty=args.dirty, formats=("jsonl", *args.format)
    )
    elapsed = time.perf_counter() - started
    meta = json.loads((Path(args.out) / "tenant.json").read_text(encoding="utf-8"))
    total = meta.get("total_records", sum(meta["counts"].values()))
    print(
        f"tenant written to {args.out}: {total} records in {elapsed:.1f}s "
        f"({total / max(elapsed, 1e-9):,.0f}/s)"
    )
    for resource, count in meta["counts"].items():
        print(f"  {resource:<20} {count:>9}")
    if args.dirty:
        manifest = json.loads((Path(args.out) / "dirty_manifest.json").read_text(encoding="utf-8"))
        print("  dirty: " + ", ".join(f"{kind}={len(items)}" for kind, items in manifest.items()))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.target == "ascora":
        from airflow_ascora_provider.sandbox.ascora import create_app

        tenant = Path(args.tenant)
        if not (tenant / "tenant.json").exists():
            print(
                f"{tenant} is not a tenant directory (no tenant.json); run `generate` first", file=sys.stderr
            )
            return 2
        app = create_app(tenant, api_key=args.api_key, rate_limit=args.rate_limit)
    else:
        module = import_module(CRM_EMULATORS[args.target][0])
        kwargs = {}
        if args.api_key is not None:
            kwargs["api_key"] = args.api_key
        if args.rate_limit is not None:
            kwargs["rate_limit"] = args.rate_limit
        app = module.create_app(**kwargs)
    # An emulator may need server options (Dataverse: TLS, because msal only talks to https authorities).
    options = module.serve_options() if args.target != "ascora" and hasattr(module, "serve_options") else {}
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", **options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "generate":
        return _generate(args)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
