"""`mlitb project ...`: create, list, show, control and tune projects on a master."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

from mlitb import examples
from mlitb import local_tokens as tokens
from mlitb.cli import credit_cmd

DEFAULT_SERVER = os.environ.get("MLITB_SERVER", "http://127.0.0.1:8000")
ACTIONS = ("start", "pause", "restart", "reboot")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("project", help="projects on a master: create, list, show, start, pause, ...")
    psub = p.add_subparsers(dest="project_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--server", default=DEFAULT_SERVER, help=f"master URL (default {DEFAULT_SERVER})")
        q.add_argument("--json", action="store_true", help="print JSON")

    q = psub.add_parser("create", help="create a project (the owner token is saved locally)")
    common(q)
    q.add_argument("--spec", required=True, help="spec or model file (JSON), or a built-in example: mnist")
    q.add_argument(
        "--train", type=int, action="append", default=[], metavar="DATASET", help="training set id"
    )
    q.add_argument("--test", type=int, action="append", default=[], metavar="DATASET", help="test set id")
    q.add_argument("--name", help="project name (default: the spec file's name)")
    q.add_argument("--description", default="")
    q.add_argument("--labels", help="comma-separated label names (default: the training set's)")
    q.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="hyperparameter, repeatable"
    )
    q.add_argument("--join-key", default="", help="workers need this key to join (default: open)")
    q.add_argument("--data-url", help="data server URL workers fetch from (default: the master's /data)")
    q.add_argument("--start", action="store_true", help="start training at once")
    q.set_defaults(func=create)

    q = psub.add_parser("list", help="list projects")
    common(q)
    q.set_defaults(func=list_cmd)

    q = psub.add_parser("show", help="one project: state, iteration, workers, data, errors, clients")
    q.add_argument("name")
    common(q)
    q.add_argument("--key", default=os.environ.get("MLITB_JOIN_KEY", ""), help=KEY_HELP)
    q.set_defaults(func=show)

    q = psub.add_parser("credit", help="its volunteers by credit: applied work in multiply-adds, share")
    q.add_argument("name")
    common(q)
    q.add_argument("--key", default=os.environ.get("MLITB_JOIN_KEY", ""), help=KEY_HELP)
    q.set_defaults(func=lambda args: credit_cmd.credit(args, _request))

    for action in ACTIONS:
        q = psub.add_parser(action, help=f"{action} a project (owner)")
        q.add_argument("name")
        common(q)
        q.set_defaults(func=control, action=action)

    q = psub.add_parser("link", help="print a fresh one-time owner link for a browser (owner)")
    q.add_argument("name")
    common(q)
    q.add_argument("--token", default="", help="the owner token (default: the one stored by create)")
    q.set_defaults(func=link)

    q = psub.add_parser("set", help="change hyperparameters while it runs (owner)")
    q.add_argument("name")
    q.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    common(q)
    q.set_defaults(func=set_hyper)

    q = psub.add_parser("attach", help="attach datasets (owner)")
    q.add_argument("name")
    q.add_argument("--train", type=int, action="append", default=[])
    q.add_argument("--test", type=int, action="append", default=[])
    common(q)
    q.set_defaults(func=attach)

    q = psub.add_parser("delete", help="delete a project (owner)")
    q.add_argument("name")
    common(q)
    q.set_defaults(func=delete)

    q = psub.add_parser("model", help="download the current model")
    q.add_argument("name")
    q.add_argument("-o", "--out", type=Path, required=True)
    q.add_argument("--format", choices=("convnetjs", "mlitb"), default="mlitb")
    common(q)
    q.add_argument("--key", default=os.environ.get("MLITB_JOIN_KEY", ""), help=KEY_HELP)
    q.set_defaults(func=model)


def _spec(text: str) -> dict | list:
    path = Path(text)
    if not path.exists() and text in examples.NAMES:
        return examples.load(text)
    return json.loads(path.read_text())


KEY_HELP = "join key of a private project (or MLITB_JOIN_KEY); its owner needs none"


def _request(
    args,
    method: str,
    path: str,
    body: dict | None = None,
    owner: str | None = None,
    content: bytes | None = None,
    reader: str | None = None,
    params: dict | None = None,
    timeout: float = 60,
):
    """One call to the master; a refusal exits with the master's own message."""
    import httpx

    headers = {}
    if reader:  # a private project's reads: the owner token if this user has it, or --key
        token = tokens.get_token(args.server, reader)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if getattr(args, "key", ""):
            headers["X-Join-Key"] = args.key
    if owner:
        _check_exists(args, owner)
        token = tokens.get_token(args.server, owner)
        if not token:
            raise SystemExit(
                f"mlitb: no owner token for project {owner!r} on {args.server} in {tokens.config_path()}; "
                "only the creator (or MLITB_TOKEN) can do this"
            )
        headers["Authorization"] = f"Bearer {token}"
    try:
        resp = httpx.request(
            method,
            f"{args.server.rstrip('/')}{path}",
            json=body,
            content=content,
            params=params,
            headers=headers,
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise SystemExit(f"mlitb: master {args.server} unreachable: {exc}") from None
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise SystemExit(f"mlitb: the master refused it ({resp.status_code}): {detail}")
    return resp


def _check_exists(args, name: str) -> None:
    """Before an owner action: a misspelt project name is the likelier mistake than a lost
    owner token, so ask the master whether the project exists (403 means it does: private)."""
    import httpx

    server = args.server.rstrip("/")
    try:
        found = httpx.get(f"{server}/api/projects/{quote(name, safe='')}", timeout=30).status_code != 404
        names = [] if found else [p["name"] for p in httpx.get(f"{server}/api/projects", timeout=30).json()]
    except httpx.HTTPError as exc:
        raise SystemExit(f"mlitb: master {args.server} unreachable: {exc}") from None
    except (ValueError, KeyError, TypeError):
        return  # not an mlitb master's answer: the request itself will say what is wrong
    if not found:
        known = ", ".join(names) or "none"
        raise SystemExit(f"mlitb: no project {name!r} on {args.server} (projects: {known})")


def _master_info(args) -> dict:
    import httpx

    try:
        info = httpx.get(f"{args.server.rstrip('/')}/api", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def public_url(args, info: dict | None = None) -> str:
    """The address volunteers use, as the master names it (`mlitb serve --public-url`, or its
    LAN address); the CLI's --server when the master does not say."""
    info = _master_info(args) if info is None else info
    given = info.get("public_url")
    return given if isinstance(given, str) and given else args.server.rstrip("/")


def _data_token(args, info: dict) -> str | None:
    """The data server's write token, where this CLI knows it (it runs where `mlitb serve`
    stored it): the owner link hands it over too, so the owner's browser can upload."""
    from urllib.parse import urljoin

    data_url = info.get("data_url")
    if not (isinstance(data_url, str) and data_url):
        return None
    return tokens.get_data_token(urljoin(args.server.rstrip("/") + "/", data_url).rstrip("/"))


def mint_link(args, name: str, token: str, info: dict | None = None) -> tuple[str, bool, float]:
    """A fresh owner link: a one-time sign-in code minted by the master (POST
    /api/projects/NAME/signin-codes with the owner token); (link, carries the data token,
    expiry). Exits with the master's own message when it refuses."""
    import httpx

    info = _master_info(args) if info is None else info
    data_token = _data_token(args, info)
    body = {"data_token": data_token} if data_token else {}
    try:
        resp = httpx.post(
            f"{args.server.rstrip('/')}/api/projects/{quote(name, safe='')}/signin-codes",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise SystemExit(f"mlitb: master {args.server} unreachable: {exc}") from None
    if resp.status_code == 400 and data_token and "bad_data_token" in resp.text:
        body, data_token = {}, None  # a stale stored data token: the link goes without it
        resp = httpx.post(
            resp.request.url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
    if resp.status_code >= 400:
        raise SystemExit(f"mlitb: no owner link for {name}: {_detail(resp)}")
    out = resp.json()
    return tokens.signin_link(public_url(args, info), out["code"]), bool(data_token), out["expires"]


def _detail(resp) -> str:
    try:
        return str(resp.json().get("detail") or resp.text)
    except ValueError:
        return f"{resp.status_code} {resp.text[:200]}"


def print_owner_link(args, name: str, token: str, saved: Path | None = None, strict: bool = False) -> None:
    """The owner link: a one-time code, never the token itself (browsers keep every address
    they open); `mlitb project link NAME` prints another one. Not `strict` (right after a
    create): a master that mints no code is named, and the create still succeeded."""
    if saved is not None:
        print(f"owner token saved in {saved}")
    try:
        link, with_data, _ = mint_link(args, name, token)
    except SystemExit as exc:
        if strict:
            raise
        why = str(exc.code).removeprefix("mlitb: ")
        print(f"owner link: none ({why}); sign in by pasting the owner token at {public_url(args)}/#/signin")
        return
    print(f"owner link: {link}")
    extra = " and the data write token" if with_data else ""
    print(
        f"  (opening it once signs that browser in as the owner{extra}; it works once, for 24 hours: "
        f"`mlitb project link {name}` prints a new one)"
    )


def link(args) -> int:
    token = args.token or tokens.get_token(args.server, args.name)
    if not token:
        print(
            f"mlitb: no owner token for project {args.name!r} on {args.server} in {tokens.config_path()}; "
            "fix: run this where the project was created, or pass --token (or MLITB_TOKEN)",
            file=sys.stderr,
        )
        return 1
    print_owner_link(args, args.name, token, strict=True)
    return 0


def create(args) -> int:
    from mlitb.master.config import parse_set

    try:
        spec = _spec(args.spec)
        hyper = parse_set(args.set)
    except (OSError, ValueError) as exc:
        print(f"mlitb: {exc}", file=sys.stderr)
        return 1
    name = args.name or Path(args.spec).stem
    body = {
        "name": name,
        "description": args.description,
        "spec": spec,
        "hyper": hyper,
        "train": args.train,
        "test": args.test,
        "join_key": args.join_key,
        "start": args.start,
    }
    if args.labels:
        body["labels"] = [s.strip() for s in args.labels.split(",") if s.strip()]
    if args.data_url:
        body["data_url"] = args.data_url
    out = _request(args, "POST", "/api/projects", body).json()
    path = tokens.save_token(args.server, name, out["owner_token"])
    for w in out["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(out["project"]))
    else:
        p = out["project"]
        print(
            f"project {p['name']} created: {p['num_params']} parameters, {len(p['labels'])} labels, "
            f"{p['data_size']} training items; state {p['state']}"
        )
        print_owner_link(args, name, out["owner_token"], path)
    return 0


def list_cmd(args) -> int:
    rows = _request(args, "GET", "/api/projects").json()
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no projects")
    for r in rows:
        err = "-" if r["test_error"] is None else f"{r['test_error']:.4f}"
        print(
            f"{r['name']:<20} {r['state']:<8} it {r['iteration']:>6}  workers {r['workers']:>4}  "
            f"test error {err:>7}  power {r['power']:>9.0f} vec/s  data {r['data_size']}"
        )
    return 0


def show(args) -> int:
    p = _request(args, "GET", f"/api/projects/{args.name}", reader=args.name).json()
    if args.json:
        print(json.dumps(p))
        return 0
    print(
        f"{p['name']}: {p['state']}, iteration {p['iteration']}, test error {_num(p['test_error'], 4)}, "
        f"train loss {_num(p['train_loss'], 4)}"
    )
    print(
        f"workers {p['workers']} (assigned {p['workers_assigned']}), trackers {p['trackers']}, "
        f"power {_num(p['power'], 0)} vectors/s, {_num(p['vectors_processed'], 0)} vectors processed"
    )
    if p.get("data_source") == "device":
        held = [c["data_cached"] for c in p["clients"] if c["role"] == "trainer"]
        said = "not shown (dp)" if None in held else f"{sum(held)} items reported by its trainers"
        print(f"data on the devices: {said}, none on the data server")
    else:
        print(f"data {p['data_size']}: allocated {p['data_allocated']}, unallocated {p['data_unallocated']}")
    if p.get("dp", "off") != "off":
        budget = "no budget" if p.get("dp_epsilon") is None else f"budget {p['dp_epsilon']:g}"
        print(
            f"privacy (dp={p['dp']}): epsilon {p['epsilon']:.3f} spent, {budget}, delta {p['dp_delta']:g}, "
            f"{p['rounds']} rounds; noise z {p['dp_noise']:.3g}, clip {p['dp_clip']:.3g}, "
            f"sample rate {p['dp_sample_rate']:g}; {p['accountant']}"
        )
    print(
        f"algorithm {p['algorithm']}, compression {p['compression']}, "
        f"received {_bytes(p['bytes_in'])}, sent {_bytes(p['bytes_out'])}, "
        f"stale results applied {p['stale']}, late {p['late']}"
    )
    print(
        f"aggregation {p.get('aggregation', '-')}: results refused {p['rejected']}, "
        f"clipped {p.get('clipped', 0)}, steps refused {p.get('refused_steps', 0)}"
    )
    if p.get("verify") is False:
        print("verification off (verify=false)")
    else:
        print(
            f"verification: audits passed {p.get('audits_passed', 0)}, failed {p.get('audits_failed', 0)}, "
            f"skipped {p.get('audits_skipped', 0)}, banned {len(p.get('banned', []))}"
        )
    for b in p.get("banned", []):
        print(f"  BANNED {b['id']} {b.get('name') or '-'} ({b.get('address') or '-'}) at iteration "
              f"{b['iteration']}: {b['reason']}")  # fmt: skip
    print(f"hyper: {json.dumps(_rounded(p['hyper']))}")
    for c in p["clients"]:
        lag = "-" if c["lag_ms"] is None else f"{c['lag_ms']:.0f} ms"
        busy = "" if c.get("computing") is None else f" computing {c['computing']:.0%}"
        if c.get("rejected") or c.get("clipped"):
            busy += f" refused {c.get('rejected', 0)} clipped {c.get('clipped', 0)}"
        if c.get("verified"):
            busy += f" verified {c['verified']}"
        if c.get("suspect"):
            busy += " (suspect)"
        if c.get("probation"):
            busy += " (probation)"
        if c.get("test_error") is not None:
            busy += f" its test error {c['test_error']:.4f}"
        print(
            f"  {c['id']} {c['kind']:<7} {c['role']:<8} {c['backend']:<12} "
            f"{_num(c['vectors_per_s'], 0):>9} vec/s "
            f"alloc {_num(c['data_allocated'], 0):>6} cached {_num(c['data_cached'], 0):>6} lag {lag} "
            f"in {_bytes(c['bytes_in'])} out {_bytes(c['bytes_out'])}{busy}"
        )
    return 0


def _num(value, decimals: int) -> str:
    """A float for people: `decimals` places; '-' for none yet."""
    return "-" if value is None else f"{value:.{decimals}f}"


def _rounded(hyper: dict) -> dict:
    """Six significant digits: 0.1 + 0.2 shows as 0.3, not 0.30000000000000004."""
    return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in hyper.items()}


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def control(args) -> int:
    out = _request(args, "POST", f"/api/projects/{args.name}/{args.action}", {}, owner=args.name).json()
    print(
        json.dumps(out["project"])
        if args.json
        else f"{args.name}: {args.action} done ({out['project']['state']})"
    )
    return 0


def set_hyper(args) -> int:
    from mlitb.master.config import parse_set

    try:
        changes = parse_set(args.pairs)
    except ValueError as exc:
        print(f"mlitb: {exc}", file=sys.stderr)
        return 1
    out = _request(args, "PATCH", f"/api/projects/{args.name}/hyper", changes, owner=args.name).json()
    print(json.dumps(out) if args.json else f"{args.name}: {json.dumps(out['hyper'])}")
    return 0


def attach(args) -> int:
    body = {"train": args.train, "test": args.test}
    out = _request(args, "POST", f"/api/projects/{args.name}/datasets", body, owner=args.name).json()
    for w in out["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(
        json.dumps(out["project"])
        if args.json
        else f"{args.name}: {out['project']['data_size']} training items"
    )
    return 0


def delete(args) -> int:
    _request(args, "DELETE", f"/api/projects/{args.name}", owner=args.name)
    print(json.dumps({"deleted": args.name}) if args.json else f"{args.name} deleted")
    return 0


def model(args) -> int:
    resp = _request(args, "GET", f"/api/projects/{args.name}/model?format={args.format}", reader=args.name)
    args.out.write_bytes(resp.content)
    print(f"{args.name} -> {args.out}")
    return 0
