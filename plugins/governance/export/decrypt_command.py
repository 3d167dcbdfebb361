"""``python -m governance decrypt-bundle``: open an export bundle (``.zip.age``).

    python -m governance decrypt-bundle BUNDLE.zip.age --output bundle.zip [--extract DIR]
    python -m governance decrypt-bundle --request-id exp-20261128-0123456789ab --extract DIR

The passphrase is read from standard input (or prompted for on a terminal), never from the
command line. With ``--request-id`` the published bundle is fetched from the exports prefix and
the stored passphrase is used (privacy staff checking a bundle; the reveal is counted). With
``--extract`` the files are unpacked and every checksum in ``manifest.json`` is verified.
Decryption streams: memory stays small however large the bundle.

The person does not need this: ``age -d -o bundle.zip BUNDLE.zip.age`` (or ``rage``) with the
passphrase does the same with a free tool.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any

from governance.config import GOVERNANCE_CONN_ID
from governance.crypto import cipher_from_airflow
from governance.datamap import load_datamap
from governance.db import connect, conninfo_for
from governance.export.age import AgeError, decrypt_to
from governance.export.bundle import MANIFEST_PATH, BundleManifest
from governance.export.passphrase_command import operating_system_user
from governance.export.state import reveal_passphrase
from governance.export.storage import bundle_locations
from governance.objectstore import s3_client
from governance.privacy_requests import validate_request_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", nargs="?", help="the .zip.age file ('-' for standard input)")
    parser.add_argument("--request-id", default=None, help="fetch the published bundle of this request instead")
    parser.add_argument("--output", "-o", default=None, help="write the decrypted ZIP here")
    parser.add_argument("--extract", default=None, help="unpack into this folder and verify the manifest")


def _read_passphrase() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("passphrase: ").strip()
    return sys.stdin.readline().strip()


def verify_and_extract(zip_path: Path, target: Path | None) -> tuple[int, list[str]]:
    """Check every entry against ``manifest.json`` (and unpack it into ``target``); return the
    number of files checked and the paths that do not match."""

    problems: list[str] = []
    with zipfile.ZipFile(zip_path) as archive:
        manifest = BundleManifest.from_json(archive.read(MANIFEST_PATH))
        listed = {f["path"]: f for f in manifest.files}
        names = [n for n in archive.namelist() if n != MANIFEST_PATH and not n.endswith("/")]
        for name in sorted(set(listed) - set(names)):
            problems.append(f"{name}: listed in the manifest but missing")
        for name in names:
            digest = hashlib.sha256()
            size = 0
            destination = (target / name) if target else None
            if destination is not None:
                if not destination.resolve().is_relative_to(target.resolve()):  # type: ignore[union-attr]
                    problems.append(f"{name}: refuses to unpack outside the folder")
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(name) as entry, (destination.open("wb") if destination else _Null()) as out:
                while chunk := entry.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            expected = listed.get(name)
            if expected is None:
                problems.append(f"{name}: not in the manifest")
            elif expected["sha256"] != digest.hexdigest() or int(expected["bytes"]) != size:
                problems.append(f"{name}: checksum or size differs from the manifest")
        if target is not None:
            (target / MANIFEST_PATH).write_bytes(archive.read(MANIFEST_PATH))
    return len(names), problems


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None


def _open_source(args: argparse.Namespace) -> tuple[IO[bytes] | Any, str | None]:
    """The encrypted stream and, for --request-id, the stored passphrase."""
    if args.request_id:
        from datetime import UTC, datetime


        request_id = validate_request_id(args.request_id)
        locations = bundle_locations(load_datamap(), request_id)
        with connect(conninfo_for(GOVERNANCE_CONN_ID)) as conn:
            passphrase = reveal_passphrase(
                conn, request_id, cipher=cipher_from_airflow(), at=datetime.now(UTC), by=operating_system_user()
            )
        body = s3_client(locations.connection_id).get_object(Bucket=locations.bucket, Key=locations.published_key)["Body"]
        return body, passphrase
    if args.bundle in (None, ""):
        raise ValueError("give a bundle file or --request-id")
    if args.bundle == "-":
        return sys.stdin.buffer, None
    return open(args.bundle, "rb"), None


def run(args: argparse.Namespace) -> int:
    if not args.output and not args.extract:
        print("error: give --output FILE.zip and/or --extract DIR", file=sys.stderr)
        return 2
    if args.bundle == "-" and not args.request_id:
        print("error: with the bundle on standard input the passphrase cannot be read from it", file=sys.stderr)
        return 2
    try:
        source, passphrase = _open_source(args)
    except Exception as exc:  # a missing file, an unknown request: say what, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    passphrase = passphrase or _read_passphrase()
    with tempfile.TemporaryDirectory(prefix="decrypt-bundle-") as tmp:
        zip_path = Path(args.output) if args.output else Path(tmp) / "bundle.zip"
        try:
            with zip_path.open("wb") as out:
                size = decrypt_to(source, out, passphrase)
        except AgeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if args.output:
                zip_path.unlink(missing_ok=True)
            return 1
        finally:
            source.close()
        print(f"decrypted {size} bytes" + (f" to {zip_path}" if args.output else ""), file=sys.stderr)
        if args.extract:
            target = Path(args.extract)
            target.mkdir(parents=True, exist_ok=True)
            checked, problems = verify_and_extract(zip_path, target)
            for problem in problems:
                print(f"problem: {problem}", file=sys.stderr)
            print(f"extracted {checked} file(s) to {target}; manifest {'MISMATCH' if problems else 'verified'}",
                  file=sys.stderr)  # fmt: skip
            return 1 if problems else 0
    return 0
