"""`mlitb zoo ...`: the master's model zoo: list, show, download, publish, start from, delete."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlitb import local_tokens as tokens

from .project_cmd import DEFAULT_SERVER, _request, print_owner_link


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="the model zoo: published closures on a master")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--server", default=DEFAULT_SERVER, help=f"master URL (default {DEFAULT_SERVER})")
        q.add_argument("--json", action="store_true", help="print JSON")

    q = zsub.add_parser("list", help="published models")
    common(q)
    q.set_defaults(func=cmd_list)

    q = zsub.add_parser("show", help="one entry: claim, data, hyperparameters")
    q.add_argument("id", type=int)
    common(q)
    q.set_defaults(func=cmd_show)

    q = zsub.add_parser("download", help="an entry's closure file")
    q.add_argument("id", type=int)
    q.add_argument("-o", "--out", type=Path, help="file to write (default NAME-ITERATION.mlitb)")
    common(q)
    q.set_defaults(func=cmd_download)

    q = zsub.add_parser("publish", help="publish a project's model (owner): exported, verified, listed")
    q.add_argument("project")
    q.add_argument("--name", help="entry name (default: the project's)")
    q.add_argument("--no-embed-test", action="store_true", help="leave the test set out of the file")
    common(q)
    q.set_defaults(func=cmd_publish)

    q = zsub.add_parser("start", help="a new project from an entry")
    q.add_argument("id", type=int)
    q.add_argument("--name", required=True, help="the new project's name")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument("--continue", dest="cont", action="store_true",
                      help="continue training exactly where it stopped (optimizer state too)")  # fmt: skip
    mode.add_argument("--drop-last-layer", action="store_true",
                      help="transfer learning: a new output layer for --labels")  # fmt: skip
    q.add_argument("--labels", help="comma-separated labels of the new project")
    q.add_argument("--train", type=int, action="append", metavar="DATASET")
    q.add_argument("--test", type=int, action="append", metavar="DATASET")
    q.add_argument("--start", action="store_true", help="start training at once")
    common(q)
    q.set_defaults(func=cmd_start)

    q = zsub.add_parser("delete", help="remove an entry (owner of the project that published it)")
    q.add_argument("id", type=int)
    common(q)
    q.set_defaults(func=cmd_delete)


def _error(e: dict) -> str:
    return "-" if e.get("claimed_error") is None else f"{e['claimed_error']:.2%}"


def cmd_list(args) -> int:
    rows = _request(args, "GET", "/api/zoo").json()
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("the zoo is empty")
    for e in rows:
        print(
            f"{e['id']:>4}  {e['name']:<20} {e['verification']:<10} test error {_error(e):>7}  "
            f"{e['num_params']:>10,} params  it {e['iteration']:>6}  {e['task']}  {e['closure_id'][7:19]}"
        )
    return 0


def cmd_show(args) -> int:
    e = _request(args, "GET", f"/api/zoo/{args.id}").json()
    if args.json:
        print(json.dumps(e))
        return 0
    print(f"{e['id']}: {e['name']} - {e['description'] or 'no description'}")
    print(f"task: {e['task']}; labels: {', '.join(e['labels'][:20])}")
    print(f"{e['num_params']:,} parameters, iteration {e['iteration']}, {e['vectors_processed']:,} vectors")
    print(f"claimed test error {_error(e)} on {e['claim_test_set'] or '-'}: {e['verification']} "
          f"({e['verification_detail']})")  # fmt: skip
    for role in ("train", "test"):
        for d in e["data"][role]:
            print(f"{role}: {d['name']} {d['items']} items {d['content_hash']}")
    print(f"closure {e['closure_id']}, file {e['file']} ({e['size']:,} bytes)")
    return 0


def cmd_download(args) -> int:
    e = _request(args, "GET", f"/api/zoo/{args.id}").json()
    out = args.out or Path(f"{e['name']}-{e['iteration']}.mlitb")
    resp = _request(args, "GET", f"/api/zoo/{args.id}/file", timeout=600)
    out.write_bytes(resp.content)
    print(f"zoo entry {args.id} -> {out}")
    return 0


def cmd_publish(args) -> int:
    body = {"embed_test": not args.no_embed_test}
    if args.name:
        body["name"] = args.name
    out = _request(
        args, "POST", f"/api/projects/{args.project}/publish", body, owner=args.project, timeout=600
    )
    e = out.json()["entry"]
    if args.json:
        print(json.dumps(out.json()))
    else:
        new = "published" if out.json()["created"] else "already published"
        print(
            f"{args.project}: {new} as zoo entry {e['id']} ({e['verification']}: {e['verification_detail']})"
        )
    return 0


def cmd_start(args) -> int:
    body: dict = {"name": args.name, "start": args.start}
    if args.cont:
        body["continue"] = True
    if args.drop_last_layer:
        body["drop_last_layer"] = True
    if args.labels:
        body["labels"] = [s.strip() for s in args.labels.split(",") if s.strip()]
    if args.train is not None:
        body["train"] = args.train
    if args.test is not None:
        body["test"] = args.test
    out = _request(args, "POST", f"/api/zoo/{args.id}/start", body, timeout=600).json()
    path = tokens.save_token(args.server, args.name, out["owner_token"])
    for w in out["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    p = out["project"]
    if args.json:
        print(json.dumps(p))
    else:
        print(
            f"project {p['name']} created from zoo entry {args.id}: iteration {p['iteration']}, "
            f"{len(p['labels'])} labels, {p['data_size']} training items"
        )
        print_owner_link(args, args.name, out["owner_token"], path)
    return 0


def cmd_delete(args) -> int:
    e = _request(args, "GET", f"/api/zoo/{args.id}").json()
    _request(args, "DELETE", f"/api/zoo/{args.id}", owner=e["project"])
    print(json.dumps({"deleted": args.id}) if args.json else f"zoo entry {args.id} deleted")
    return 0
