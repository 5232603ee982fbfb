"""Opening Deep Lake datasets by URL: credentials, reachability, formats, errors. No torch.

``LakeSource`` is the picklable address of a dataset (URL, credentials, version); every
process, DataLoader workers included, opens its own handle from it. Both the data path
(``fashion_lake.data``) and ingest (``fashion_lake.ingest``) open lakes through this module.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from fashion_lake.errors import ConfigError, DatasetError, FashionLakeError

INGEST_KEY = "fashion_lake.ingest"
ROW_ID = "fashion_lake_row"
REMOTE_SCHEMES = ("s3://", "gcs://", "gs://", "azure://", "az://", "al://", "hub://", "https://")


# Storage credentials and settings: strings, or numbers such as ``connect_timeout: 30``.
Creds = dict[str, str | int | float]
ENV_REFERENCE = "env:"
# Credential keys that name things rather than prove identity; any other key is a secret.
PUBLIC_CREDS = {
    "endpoint_url", "aws_region", "region", "profile_name", "aws_access_key_id",
    "account_name", "client_id", "tenant_id", "creds_key", "project", "connect_timeout",
}  # fmt: skip
# Seconds to wait for a storage endpoint to accept a connection (``creds.connect_timeout``): Deep
# Lake retries an unreachable one for 40 s and more per call before it gives up.
CONNECT_TIMEOUT = 10.0
# Where remote URLs connect when no ``endpoint_url`` is given.
DEFAULT_ENDPOINTS = {"s3://": ("s3.amazonaws.com", 443), "gcs://": ("storage.googleapis.com", 443),
                     "gs://": ("storage.googleapis.com", 443)}  # fmt: skip
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_reached: set[tuple[str, int]] = set()


def check_secrets(creds: Creds | None, token: str | None = None, flag: str = "--data.") -> None:
    """Refuse secrets given by value: the config, checkpoints and logs would keep them.

    Secrets are named by reference instead, ``env:NAME`` for the environment variable NAME,
    and resolved only when a dataset is opened (``storage_args``). Only the keys in
    ``PUBLIC_CREDS`` (endpoint, region, key id, ...) may be given by value.
    """
    named = {**(creds or {}), **({"token": token} if token is not None else {})}
    for key, value in named.items():
        if key not in PUBLIC_CREDS and not str(value).startswith(ENV_REFERENCE):
            where = f"{flag}token" if key == "token" and token is not None else f"{flag}creds.{key}"
            raise ConfigError(
                f"{where} is given by value; it would be written to config.yaml, checkpoints and logs. "
                f"Put it in an environment variable and pass its name: {key}: env:NAME (or leave it "
                "out and let Deep Lake read the standard variables, e.g. AWS_SECRET_ACCESS_KEY)."
            )


def brief(error: BaseException) -> str:
    """A library's error message on one line (Deep Lake's and S3's span several)."""
    return " ".join(str(error).split())


@contextmanager
def storage_errors(what: str, hint: str = "") -> Iterator[None]:
    """Turn a storage library's error into one ``DatasetError``: "{what} failed: {error}. {hint}".

    Our own errors (a missing env var, an unopenable version) pass unchanged.
    """
    try:
        yield
    except FashionLakeError:
        raise
    except Exception as e:  # deeplake's errors share no base class beyond Exception
        raise DatasetError(f"{what} failed: {brief(e)}" + (f". {hint}" if hint else "")) from e


def _resolve(key: str, value: str) -> str:
    if not value.startswith(ENV_REFERENCE):
        return value
    name = value.removeprefix(ENV_REFERENCE)
    if name not in os.environ:
        raise ConfigError(f"{key} refers to the environment variable {name}, which is not set; export it.")
    return os.environ[name]


def storage_args(creds: Creds | None, token: str | None = None) -> dict[str, Any]:
    """``creds`` and ``token`` for Deep Lake, with ``env:NAME`` references resolved."""
    resolved = {
        key: _resolve(f"creds.{key}", str(value))
        for key, value in (creds or {}).items()
        if key != "connect_timeout"  # ours (check_reachable), not Deep Lake's
    }
    return {"creds": resolved, "token": None if token is None else _resolve("token", token)}


def _endpoint(url: str, creds: Creds | None) -> tuple[str, int] | None:
    """The host and port that ``url``'s storage connects to, where known: ``creds.endpoint_url``,
    else the standard variables (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``,
    ``STORAGE_EMULATOR_HOST``), else the S3 or GCS default, except where an AWS profile (which
    may name its own endpoint) is in play."""
    creds = creds or {}
    s3, gcs = url.startswith("s3://"), url.startswith(("gcs://", "gs://"))
    names = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if s3 else ("STORAGE_EMULATOR_HOST",) if gcs else ()
    endpoint = str(creds.get("endpoint_url") or next((os.environ[n] for n in names if os.environ.get(n)), ""))
    if endpoint:
        parsed = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parsed.hostname:
            return parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
        return None
    if s3 and ("profile_name" in creds or os.environ.get("AWS_PROFILE")):
        return None
    return next((where for scheme, where in DEFAULT_ENDPOINTS.items() if url.startswith(scheme)), None)


def check_reachable(url: str, creds: Creds | None) -> None:
    """Refuse, within ``creds.connect_timeout`` seconds, a remote dataset whose storage endpoint
    accepts no connection, rather than wait out Deep Lake's retries. Behind a proxy (``*_PROXY``
    variables) the endpoint is not contacted directly, so it is not checked."""
    if is_local(url) or url.startswith("mem://") or any(os.environ.get(v) for v in PROXY_VARIABLES):
        return
    where = _endpoint(url, creds)
    if where is None or where in _reached:
        return
    raw = (creds or {}).get("connect_timeout", CONNECT_TIMEOUT)
    try:
        timeout = float(raw)
    except (TypeError, ValueError):
        timeout = -1.0
    if not timeout > 0:
        raise ConfigError(f"creds.connect_timeout must be a number of seconds above 0, not {raw!r}.")
    try:
        socket.create_connection(where, timeout=timeout).close()
    except OSError as e:
        raise DatasetError(
            f"cannot reach the storage of {url!r} at {where[0]}:{where[1]} within {timeout:g} s "
            f"({brief(e) or type(e).__name__}); check creds.endpoint_url and the network, or allow "
            "longer with creds.connect_timeout (seconds)."
        ) from None
    _reached.add(where)


def is_local(url: str) -> bool:
    return url.startswith("file://") or "://" not in url


def local_path(url: str) -> Path:
    return Path(url.removeprefix("file://")).expanduser().absolute()


def _query_v3(url: str, args: dict[str, Any]) -> Any:
    """A Deep Lake 3 dataset as Deep Lake 4 reads it: through a query (``deeplake.exists`` is False)."""
    import deeplake

    return deeplake.query(f'SELECT * FROM "{url}"', **args)


def lake_format(url: str, creds: Creds | None = None, token: str | None = None) -> str | None:
    """``"v4"``, ``"v3"`` (a Deep Lake 3 dataset, read through a query) or None: nothing there.

    ``hub://`` URLs name Deep Lake 3 datasets and are not contacted here.
    """
    import deeplake

    if url.startswith("hub://"):
        return "v3"
    check_reachable(url, creds)
    args = storage_args(creds, token)
    if deeplake.exists(url, **args):
        return "v4"
    try:
        _query_v3(url, args)
    except Exception:  # deeplake's errors share no base class: nothing a query can read either
        return None
    return "v3"


def is_v3(ds: Any) -> bool:
    """Whether ``ds`` came from ``open_lake`` of a Deep Lake 3 dataset (a query view, not a dataset)."""
    import deeplake

    return not isinstance(ds, deeplake.ReadOnlyDataset | deeplake.Dataset)


V3_NOTICE = (
    "{url!r} is a Deep Lake 3 dataset, read through deeplake.query; it has no version to pin. "
    "`python -m fashion_lake.ingest convert {url} DEST` makes a native Deep Lake 4 copy that can be pinned."
)


def open_lake(
    url: str,
    creds: Creds | None = None,
    token: str | None = None,
    check_complete: bool = True,
) -> Any:
    """Open ``url`` read-only, turning Deep Lake's errors into one clear ``DatasetError``.

    A Deep Lake 3 dataset (``hub://``, or any URL that ``deeplake.open_read_only`` does not
    open but a query does) comes back as a query view: Deep Lake 4 reads that format only so.
    """
    import deeplake

    check_reachable(url, creds)
    args = storage_args(creds, token)
    try:
        if url.startswith("hub://"):
            ds = _query_v3(url, args)
        else:
            try:
                ds = deeplake.open_read_only(url, **args)
            except deeplake.LogNotexistsError as not_v4:  # not a 4.x dataset; denied access is not this
                try:
                    ds = _query_v3(url, args)
                except Exception:
                    raise not_v4 from None
    except Exception as e:  # deeplake's errors share no base class beyond Exception
        hint = (
            "Check the URL and that the dataset exists there"
            + (" (build it with `python -m fashion_lake.ingest`)" if is_local(url) else "")
            + ("; check the credentials (creds/token)" if not is_local(url) else "")
            + "."
        )
        raise DatasetError(f"cannot open Deep Lake dataset {url!r}: {brief(e)}. {hint}") from e
    meta = getattr(ds, "metadata", {})  # query views have none
    if check_complete and INGEST_KEY in meta and meta[INGEST_KEY] != "complete":
        raise DatasetError(
            f"{url!r} is an ingest that did not finish; run the ingest again (it replaces it)."
        )
    return ds


@dataclass(frozen=True)
class LakeSource:
    """Where a dataset lives; cheap to pickle into DataLoader workers."""

    url: str
    creds: Creds | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    query: str | None = None
    version: str | None = None  # a Deep Lake commit id; None: the latest

    def open_base(self) -> Any:
        ds = open_lake(self.url, self.creds, self.token)
        if self.version is None or getattr(ds, "version", self.version) == self.version:
            return ds
        try:
            return ds.history[self.version].open()
        except Exception as e:
            raise DatasetError(
                f"version {self.version} of {self.url!r}, recorded in the checkpoint, cannot be opened "
                f"({brief(e)}). Restore it, or pass --data.use_latest_version true to read the latest one."
            ) from e

    def open(self) -> Any:
        """The dataset, or the view its TQL ``query`` selects."""
        return self.select(self.open_base())

    def row_ids(self, base: Any) -> np.ndarray | None:
        """For a query view of ``base``, the dataset row behind each view row (``index`` names real rows)."""
        if not self.query:
            return None
        view = self.select(base.query(f"SELECT *, ROW_NUMBER() AS {ROW_ID}"))
        return np.asarray(view[ROW_ID][0 : len(view)], dtype=np.int64)

    def select(self, ds: Any) -> Any:
        """``ds`` itself, or the view of it that ``query`` selects."""
        if not self.query:
            return ds
        try:
            return ds.query(self.query)
        except Exception as e:
            raise DatasetError(
                f"query {self.query!r} on {self.url!r} failed: {brief(e)}. Queries are Deep Lake TQL, e.g. "
                '"SELECT * WHERE labels IN (0, 1)" or "SELECT * WHERE ROW_NUMBER() < 1000".'
            ) from e
