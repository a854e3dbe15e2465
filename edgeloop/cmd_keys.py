"""`edgeloop keys status|rotate|retire`: signing key rotation on a live fleet, as clients of `edgeloop cloud`'s
REST API (--cloud-url, --token or EDGELOOP_CLOUD_URL / EDGELOOP_CLOUD_TOKEN, like `edgeloop deploy`).
`edgeloop keys generate` (the first pair, no cloud needed) stays in edgeloop/cli.py."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from edgeloop.cmd_cloud import call_cloud

__all__ = ["register"]

console = Console()
_URL = typer.Option("http://127.0.0.1:8700", envvar="EDGELOOP_CLOUD_URL", help="Base URL of `edgeloop cloud`.")
_TOKEN = typer.Option(None, envvar="EDGELOOP_CLOUD_TOKEN", help="Bearer token (operator to act, viewer to read).")
_REASON = typer.Option(None, help="Why (kept in the audit log).")


def _print_key_set(message: dict[str, Any], what: str) -> None:
    keys = ", ".join(entry["key_id"] for entry in message["keys"])
    console.print(f"{what}: key set {message['seq']} signed by {message['signer']} published; trusted now: {keys}")


def keys_status(cloud_url: str = _URL, token: str | None = _TOKEN) -> None:
    """Show the signing key, the keys devices trust and the bundles each key signed.

    Example: [cyan]edgeloop keys status[/cyan]
    """
    status = call_cloud("GET", cloud_url, "/v1/keys", token)
    console.print(f"current key {status['current']}; trusted: {', '.join(status['trusted'])} (key set {status['seq']})")
    if status["overlap"]:
        console.print("rotation under way: bundles signed by either key verify; retire the old one with "
                      "`edgeloop keys retire`")  # fmt: skip
    for key, bundles in sorted(status["bundles_by_key"].items()):
        console.print(f"  {key}: {', '.join(bundles)}")


def keys_rotate(reason: str | None = _REASON, cloud_url: str = _URL, token: str | None = _TOKEN) -> None:
    """Create a new signing key; the cloud publishes it to devices signed by the old key (the overlap starts).

    `edgeloop convert` signs with the new key from now on (copy keys_dir to a build machine that signs elsewhere).
    Bundles signed by either key verify until `edgeloop keys retire`.

    Example: [cyan]edgeloop keys rotate --reason "yearly rotation"[/cyan]
    """
    _print_key_set(call_cloud("POST", cloud_url, "/v1/keys/rotate", token, json={"reason": reason}), "rotated")


def keys_retire(reason: str | None = _REASON, cloud_url: str = _URL, token: str | None = _TOKEN) -> None:
    """Retire the old signing key: devices refuse bundles it signed from now on (the message is signed by the new key).

    Check first with `edgeloop keys status` that what you deploy next is signed by the current key.

    Example: [cyan]edgeloop keys retire --reason "every device reports the new key"[/cyan]
    """
    _print_key_set(call_cloud("POST", cloud_url, "/v1/keys/retire", token, json={"reason": reason}), "retired")


def register(keys_app: typer.Typer) -> None:
    keys_app.command("status")(keys_status)
    keys_app.command("rotate")(keys_rotate)
    keys_app.command("retire")(keys_retire)
