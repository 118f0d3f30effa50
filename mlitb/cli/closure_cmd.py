"""`mlitb closure ...`: export, inspect, verify, resume and convert research closures."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlitb import local_tokens as tokens
from mlitb.closure import Closure, ClosureError

from .project_cmd import DEFAULT_SERVER, _request


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("closure", help="research closures: export, inspect, verify, resume (.mlitb files)")
    csub = p.add_subparsers(dest="closure_command", metavar="ACTION", required=True)

    def server(q: argparse.ArgumentParser, required_help: str = "master URL") -> None:
        q.add_argument("--server", default=DEFAULT_SERVER, help=f"{required_help} (default {DEFAULT_SERVER})")

    q = csub.add_parser("export", help="download a project's closure from a master")
    q.add_argument("project")
    server(q)
    q.add_argument("-o", "--out", type=Path, help="file to write (default PROJECT-ITERATION.mlitb)")
    q.add_argument(
        "--embed-test", action="store_true", help="embed the test set (verification then needs nothing else)"
    )
    q.set_defaults(func=cmd_export)

    q = csub.add_parser("inspect", help="a readable summary of a closure file")
    q.add_argument("file", type=Path)
    q.add_argument("--json", action="store_true", help="print the manifest")
    q.set_defaults(func=cmd_inspect)

    q = csub.add_parser("verify", help="check every checksum and recompute the claimed test error")
    q.add_argument("file", type=Path)
    q.add_argument(
        "--server", help="a data server (or master URL + /data) holding the test set by content hash"
    )
    q.add_argument(
        "--data", type=Path, action="append", default=[], metavar="ZIP", help="the test set as a zip"
    )
    q.add_argument("--device", default="cpu", help="torch device for the recomputation (cpu, cuda)")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(func=cmd_verify)

    for name, helptext in (
        ("resume", "a new project on a master continuing the closure where it stopped"),
        ("import", "a new project from a closure (continues) or a ConvNetJS/mlitb JSON model"),
    ):
        q = csub.add_parser(name, help=helptext)
        q.add_argument("file", type=Path)
        server(q)
        q.add_argument("--name", help="project name (default: the closure's project name)")
        q.add_argument("--train", type=int, action="append", metavar="DATASET",
                       help="training set id (default: found by content hash)")  # fmt: skip
        q.add_argument("--test", type=int, action="append", metavar="DATASET",
                       help="test set id (default: found by content hash)")  # fmt: skip
        q.add_argument("--start", action="store_true", help="start training at once")
        if name == "import":
            q.add_argument("--labels", help="comma-separated labels (JSON models; with --drop-last-layer)")
            q.add_argument(
                "--drop-last-layer", action="store_true", help="transfer learning: a new output layer"
            )
        q.set_defaults(func=cmd_resume)

    q = csub.add_parser("export-model", help="the closure's model as ONNX, ConvNetJS or mlitb JSON")
    q.add_argument("file", type=Path)
    q.add_argument("output", type=Path)
    q.add_argument("--to", choices=("convnetjs", "mlitb", "onnx"), default="onnx")
    q.set_defaults(func=cmd_export_model)


def _load(path: Path) -> Closure:
    try:
        return Closure.load(path)
    except ClosureError as exc:
        raise SystemExit(f"mlitb: {path}: {exc.message}") from None


def cmd_export(args) -> int:
    import httpx
    from tqdm import tqdm

    url = f"{args.server.rstrip('/')}/api/projects/{args.project}/closure"
    params = {"embed_test": "1" if args.embed_test else "0"}
    try:
        with httpx.stream("GET", url, params=params, timeout=600) as resp:
            if resp.status_code >= 400:
                resp.read()
                detail = (
                    resp.json().get("detail", resp.text)
                    if resp.headers.get("content-type", "").startswith("application/json")
                    else resp.text
                )
                raise SystemExit(f"mlitb: the master refused it ({resp.status_code}): {detail}")
            name = resp.headers.get("content-disposition", "").partition('filename="')[2].rstrip('"')
            out = args.out or Path(name or f"{args.project}.mlitb")
            total = int(resp.headers.get("content-length", 0)) or None
            with open(out, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=out.name,
                                            disable=None, file=sys.stderr) as bar:  # fmt: skip
                for chunk in resp.iter_bytes():
                    f.write(chunk)
                    bar.update(len(chunk))
            closure_id = resp.headers.get("x-closure-id", "")
    except httpx.HTTPError as exc:
        raise SystemExit(f"mlitb: master {args.server} unreachable: {exc}") from None
    print(f"{args.project} -> {out} (closure {closure_id})")
    return 0


def cmd_inspect(args) -> int:
    closure = _load(args.file)
    if args.json:
        print(json.dumps(closure.manifest, indent=1))
        return 0
    print(summary(closure, args.file))
    return 0


def summary(closure: Closure, path: Path) -> str:
    m = closure.manifest
    spec, model, tr = closure.spec, m["model"], m["training"]
    h, w, c = spec.input_shape
    lines = [
        f"closure   {path.name} (format {m['format_version']}, "
        f"written by mlitb {m.get('mlitb_version', '?')})",
        f"id        {closure.id}",
        f"file      sha256:{closure.sha256}",
        f"project   {m['project']['name']}"
        + (f": {m['project']['description']}" if m["project"].get("description") else ""),
        f"captured  {m.get('created', '?')} (project created {m['project'].get('created', '?')})",
        f"model     {len(spec.layers)} layers, input {h}x{w}x{c}, {spec.num_outputs} outputs ({spec.loss}), "
        f"{spec.num_params:,} parameters",
        f"labels    {', '.join(model['labels'][:20])}" + (" ..." if len(model["labels"]) > 20 else ""),
        f"training  {tr['optimizer']}, iteration {tr['iteration']}, "
        f"{tr['optimizer_state']['t']} optimizer steps, "
        f"{tr['vectors_processed']:,} vectors, next learning rate {tr.get('next_learning_rate', '?'):.6g}",
        "clients   "
        + (", ".join(f"{n} {k}" for k, n in tr.get("contributors", {}).items()) or "none recorded"),
        "hyper     " + " ".join(f"{k}={v}" for k, v in sorted(tr["hyper"].items()) if v is not None),
    ]
    for v in (tr.get("credit") or {}).get("volunteers", [])[:10]:
        gone = f" (forfeited: {v['forfeited']})" if v.get("forfeited") else ""
        who = v["name"] or v["volunteer"]
        lines.append(f"credit    {who}: {v['credit']:.3f} GMAC, {v['share']:.1%}{gone}")
    for role in ("train", "test"):
        for d in m["data"][role]:
            where = ", embedded" if d.get("embedded") else ""
            lines.append(f"{role:<9} {d['name']}: {d['items']:,} items, {d['content_hash']}{where}")
    privacy = m.get("privacy") or {}
    if privacy.get("data_source") == "device":
        lines.append(f"data      {privacy['training_data']}")
    g = privacy.get("guarantee")
    if g:
        lines.append(
            f"privacy   epsilon {g['epsilon']:.4g} at delta {g['delta']:g} after {g['rounds']} rounds "
            f"({g['mechanism']}; {g['neighbouring']}; clip {g.get('clip')}, {g.get('clip_rule')}; "
            f"runs [q, z, rounds] {g['runs']}; {g['accountant']}, {g['accountant_library']})"
        )
    rows = m.get("metrics", [])
    tested = [r for r in rows if r.get("test_error") is not None]
    if rows:
        loss = rows[-1].get("train_loss")
        best = min(tested, key=lambda r: r["test_error"]) if tested else None
        lines.append(
            f"metrics   {len(rows)} iterations; "
            f"last train loss {'not shown (dp)' if loss is None else format(loss, '.4g')}"
            + (
                f"; best tracked test error {best['test_error']:.2%} at iteration {best['iteration']}"
                if best
                else ""
            )
        )
    claim = closure.claim
    if claim:
        sets = ", ".join(t["name"] for t in claim["test_sets"])
        lines.append(
            f"claim     test error {claim['value']:.2%} ({claim['errors']}/{claim['count']}) on {sets} at "
            f"iteration {claim['iteration']} ({claim['executor']}, {claim['device']}; tolerance "
            f"{claim['tolerance_items']} item(s))"
        )
    else:
        lines.append("claim     none (the project had no test set)")
    problems = closure.archive.checksum_problems()
    lines.append(
        f"checksums {len(closure.archive.sums)} members match SHA256SUMS"
        if not problems
        else "checksums FAILED: " + "; ".join(problems)
    )
    return "\n".join(lines)


def cmd_verify(args) -> int:
    from mlitb.closure import verify

    closure = _load(args.file)
    server = args.server.rstrip("/") if args.server else None
    if server and not server.endswith("/data"):
        import httpx

        try:  # a master URL: its data server is at /data
            if httpx.get(f"{server}/api", timeout=10).status_code == 200:
                server += "/data"
        except httpx.HTTPError:
            pass
    quiet = args.json
    report = verify(
        closure,
        zips=args.data,
        server=server,
        device=args.device,
        progress=None if quiet else (lambda text: print(f"  ... {text}", file=sys.stderr, flush=True)),
    )
    if args.json:
        print(json.dumps({"file": str(args.file), "id": closure.id, **report.to_json()}, indent=1))
    else:
        for check in report.checks:
            print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
        print(f"{args.file}: {'verified' if report.ok else 'NOT verified'}")
    return 0 if report.ok else 1


def cmd_resume(args) -> int:
    data = args.file.read_bytes() if args.file.exists() else None
    if data is None:
        raise SystemExit(f"mlitb: {args.file}: no such file")
    if data[:2] == b"PK":
        closure = _load(args.file)
        if getattr(args, "drop_last_layer", False) or getattr(args, "labels", None):
            raise SystemExit(
                "mlitb: a closure resumes as it was; for transfer learning start from its model: "
                "`mlitb closure export-model FILE model.json --to mlitb`, then import that "
                "with --drop-last-layer"
            )
        name = args.name or closure.manifest["project"]["name"]
        params = {"name": name, "start": "1" if args.start else "0"}
        if args.train is not None:
            params["train"] = ",".join(map(str, args.train))
        if args.test is not None:
            params["test"] = ",".join(map(str, args.test))
        out = _request(args, "POST", "/api/closures", content=_with_progress(data, args.file.name),
                       params=params, timeout=600).json()  # fmt: skip
    else:
        try:
            spec = json.loads(data)
        except ValueError as exc:
            raise SystemExit(f"mlitb: {args.file}: neither a closure (zip) nor a JSON model: {exc}") from None
        name = args.name or args.file.stem.split(".")[0]
        body = {
            "name": name,
            "spec": spec,
            "train": args.train or [],
            "test": args.test or [],
            "start": args.start,
        }
        if getattr(args, "labels", None):
            body["labels"] = [s.strip() for s in args.labels.split(",") if s.strip()]
        if getattr(args, "drop_last_layer", False):
            body["drop_last_layer"] = True
        out = _request(args, "POST", "/api/projects", body).json()
    path = tokens.save_token(args.server, name, out["owner_token"])
    for w in out["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    p = out["project"]
    print(
        f"project {p['name']} created at iteration {p['iteration']} ({p['state']}): "
        f"{p['num_params']:,} parameters, "
        f"{p['data_size']} training items; owner token saved in {path}"
    )
    return 0


def cmd_export_model(args) -> int:
    closure = _load(args.file)
    try:
        closure.model().save(args.output, format=args.to)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"mlitb: {exc}") from None
    print(f"wrote {args.output} ({args.to}, {closure.spec.num_params} parameters)")
    return 0


def _with_progress(data: bytes, name: str, chunk: int = 1 << 20):
    """The upload body in chunks behind a progress bar (closures can be hundreds of MB)."""
    from tqdm import tqdm

    with tqdm(total=len(data), unit="B", unit_scale=True, desc=f"upload {name}", disable=None,
              file=sys.stderr) as bar:  # fmt: skip
        for start in range(0, len(data), chunk):
            yield data[start : start + chunk]
            bar.update(min(chunk, len(data) - start))
