"""`pm approvals list|show|approve|reject|edit|keygen`: the review tool, a thin layer over `pm.review`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pm.approvals import add_local_reviewers, ensure_local_key, key_file, load_keys, load_reviewers
from pm.config import Config
from pm.review import Published, ReviewClient, ReviewError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    approvals = subparsers.add_parser("approvals", help="review tool: list and decide pending approvals")
    actions = approvals.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[common], help="pending approvals, oldest first")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of text")
    listing.add_argument("--all", action="store_true", help="also decided and superseded requests")
    listing.set_defaults(handler=_list)

    show = actions.add_parser("show", parents=[common], help="one approval request in full")
    show.add_argument("approval_id", metavar="APPROVAL_ID")
    show.add_argument("--json", action="store_true", help="JSON instead of text")
    show.set_defaults(handler=_show)

    def decision_parser(name: str, text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, parents=[common], help=text)
        sub.add_argument("approval_id", metavar="APPROVAL_ID")
        sub.add_argument("--reviewer", required=True, help="your name, as on the allow-list (PM_REVIEWERS)")
        sub.add_argument("--key-id", default=None, help="signing key (default: the first configured key)")
        sub.add_argument(
            "--force", action="store_true", help="publish even if already decided, superseded or expired"
        )
        return sub

    approve = decision_parser("approve", "approve the proposal as it is")
    approve.set_defaults(handler=_approve)
    reject = decision_parser("reject", "reject: nothing is sent")
    reject.add_argument("--reason", required=True, help="why (kept in the journal)")
    reject.set_defaults(handler=_reject)
    edit = decision_parser("edit", "approve a corrected text instead (the process checks it first)")
    edit.add_argument("--file", required=True, help="the corrected text of the editable field; '-' reads stdin")
    edit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="also set a proposal field, signed with the edit, e.g. --set amount_cents=4500 "
        "--set 'codes=[\"a\"]' (repeatable; default: the proposal's values)",
    )
    edit.set_defaults(handler=_edit)

    keygen = actions.add_parser("keygen", parents=[common], help="create the local signing key (state dir)")
    keygen.add_argument(
        "--reviewer", action="append", default=[], help="also allow this reviewer locally (repeatable)"
    )
    keygen.set_defaults(handler=_keygen)


# ---------------------------------------------------------------- reading


def _list(args: argparse.Namespace, config: Config) -> int:
    client = ReviewClient(config)
    records = client.approvals() if args.all else client.pending()
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2, ensure_ascii=False))
        return 0
    if not records:
        print("no pending approvals" if not args.all else "no approval requests")
    for record in records:
        view = record.to_json()
        flags = " EXPIRED" if view["expired"] and record.status == "pending" else ""
        status = "" if record.status == "pending" else f" [{record.status}]"
        print(
            f"{record.approval_id}  {view['requested_at']}  {record.correlation_id}  "
            f"{view['title']!r}  "
            f"deadline {view['deadline']}{flags}{status}"
        )
    _warn_skipped(client)
    return 0


def _show(args: argparse.Namespace, config: Config) -> int:
    client = ReviewClient(config)
    record = client.show(args.approval_id)
    view = record.to_json()
    if args.json:
        print(json.dumps(view, indent=2, ensure_ascii=False))
        return 0
    payload = record.request.payload
    lines = [
        f"approval     {record.approval_id}  ({record.status}{', EXPIRED' if view['expired'] else ''})",
        f"correlation  {record.correlation_id}",
        f"requested    {view['requested_at']}   deadline {view['deadline']}   reminders {view['reminders']}",
        f"why          {', '.join(payload.reasons) or '-'}",
        f"policy       {payload.policy_version}",
        f"hash         {payload.draft_hash}",
        f"checks       {'; '.join(payload.findings) or 'passed'}",
        "",
        payload.title,
    ]
    # The facts the process chose to show, then the proposal itself (its editable text last, in full).
    width = max((len(f.label) for f in payload.display), default=0)
    lines += [f"  {f.label:<{width}}  {_indent(f.value).strip()}" for f in payload.display]
    proposal = record.proposal
    editable = payload.editable
    lines += ["", f"proposal ({payload.proposal_type}):"]
    lines += [f"  {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in proposal.items() if k != editable]
    if editable is not None:
        lines += [f"  {editable} (an edit replaces it):", _indent(str(proposal.get(editable, "")))]
    for decided in record.decisions:
        d = decided.payload
        lines += ["", f"decided: {d.decision} by {d.reviewer} at {d.decided_at.isoformat()} (key {d.key_id})"]
    for ignored, why in record.ignored:
        d = ignored.payload
        lines += ["", f"ignored decision: {d.decision} by {d.reviewer} at {d.decided_at.isoformat()}: {why}"]
    if record.superseded_by:
        lines += ["", f"superseded by {record.superseded_by}"]
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------- deciding


def _approve(args: argparse.Namespace, config: Config) -> int:
    client = _decider(args, config)
    return _print_published(client.approve(args.approval_id, args.reviewer, force=args.force))


def _reject(args: argparse.Namespace, config: Config) -> int:
    client = _decider(args, config)
    return _print_published(client.reject(args.approval_id, args.reviewer, args.reason, force=args.force))


def _edit(args: argparse.Namespace, config: Config) -> int:
    if args.file == "-":
        body = sys.stdin.read()
    else:
        try:
            body = Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ReviewError(f"cannot read the edited text {args.file}: {exc}") from exc
    fields = _parse_sets(args.set)
    client = _decider(args, config)
    return _print_published(
        client.edit(args.approval_id, args.reviewer, body, fields=fields or None, force=args.force)
    )


def _parse_sets(items: list[str]) -> dict[str, Any]:
    """`FIELD=JSON` pairs; a value that is not JSON is taken as a string."""
    fields: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ReviewError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            fields[name.strip()] = json.loads(raw)
        except ValueError:
            fields[name.strip()] = raw
    return fields


def _decider(args: argparse.Namespace, config: Config) -> ReviewClient:
    """A client that can sign; with no key anywhere, make the local one and say so."""
    if args.key_id is None and not load_keys(config):
        key_id, _, created = ensure_local_key(config)
        if created:
            print(
                f"pm: generated approval signing key {key_id} in {key_file(config)}; "
                "the PM verifies with it when it shares this state dir (else copy it into PM_APPROVAL_KEYS)",
                file=sys.stderr,
            )
    allowed = load_reviewers(config)
    if args.reviewer not in allowed:
        hint = f"allowed: {', '.join(allowed)}" if allowed else "the allow-list is empty"
        print(
            f"pm: warning: reviewer {args.reviewer!r} is not on the allow-list ({hint}); "
            "the PM will refuse this decision unless its PM_REVIEWERS includes it",
            file=sys.stderr,
        )
    return ReviewClient(config, key_id=args.key_id)


def _print_published(published: Published) -> int:
    event = published.event
    print(
        f"published {event.type} {event.payload.decision} for approval {event.payload.approval_id} "
        f"to {published.topic} partition {published.partition} offset {published.offset}"
    )
    print(json.dumps(event.model_dump(mode="json"), indent=2, ensure_ascii=False))
    return 0


def _keygen(args: argparse.Namespace, config: Config) -> int:
    key_id, _, created = ensure_local_key(config)
    path = key_file(config)
    # The key ID alone on stdout (scripts capture it); what happened on stderr.
    what = "generated" if created else "using existing"
    print(f"pm: {what} approval signing key {key_id} in {path} (mode 0600)", file=sys.stderr)
    if args.reviewer:
        reviewers = add_local_reviewers(config, args.reviewer)
        print(f"pm: local reviewer allow-list: {', '.join(reviewers)}", file=sys.stderr)
    print(key_id)
    return 0


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines()) or "    (empty)"


def _warn_skipped(client: ReviewClient) -> None:
    if client.skipped:
        print(f"pm: warning: skipped {client.skipped} undecodable record(s)", file=sys.stderr)
