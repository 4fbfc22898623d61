"""HEASARC's RXTE archive in its AWS Open Data bucket, through s3fs.

`s3://nasa-heasarc/xte/data/archive/AO<c>/P<prnb>/<obsid>/...` holds the same
files as `https://heasarc.gsfc.nasa.gov/FTP/xte/data/archive/...` (region
us-east-1, about 5.4 TB). The bucket allows anonymous `GetObject` and
`ListBucket`, so requests go unsigned by default (`archive.s3.anon`); s3fs
refuses them without `anon=True`. `archive.s3.endpoint_url` points at another
S3 service (a site mirror, or the tests' local server).

s3fs makes the client (anonymous or with the usual AWS credentials, region,
endpoint, time-outs) and translates S3's error codes; its own retries and
botocore's are switched off, because the downloader retries every transport
the same way and must not retry a host that cannot be reached. Listings are
paginated here (ListObjectsV2 answers 1,000 keys at most per call; a
single-call listing silently loses the rest) and bounded in size.
"""
from __future__ import annotations

import asyncio
import re
from pathlib import PurePosixPath
from typing import Any, Iterator

from rxte_hpc.archive.listing import is_safe_name, validate_base_url
from rxte_hpc.archive.transport import READ_SIZE, Body, Restart, Transient, Transport, missing_extra, \
    network_failure, parse_content_range, read_up_to
from rxte_hpc.core.archiveconfig import S3Config
from rxte_hpc.core.errors import DataError, NoDataError, UsageError
from rxte_hpc.core.safepath import safe_relpath

MAX_LISTING_KEYS = 100_000
"""Keys one listing may return; an ObsID directory has about 250 (a larger answer is not an ObsID)."""
MAX_TREE_DEPTH = 16
"""Levels below an ObsID directory a key may have (the real tree has 3)."""

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: S3 error codes that ask the client to come back later.
_RETRY_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                          "ServiceUnavailable", "RequestLimitExceeded"})


def split_s3_root(root: str) -> tuple[str, str]:
    """(bucket, key prefix ending in '/' or empty) of an `s3://bucket/prefix` archive root; UsageError otherwise."""
    shown = repr(root[:80])
    if not root.startswith("s3://"):
        raise UsageError(f"archive.root: not an s3:// URL: {shown}")
    bucket, _, prefix = root[len("s3://"):].partition("/")
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise UsageError(f"archive.root: {shown} does not start with an S3 bucket name (s3://nasa-heasarc/...)")
    if any(c in prefix for c in "?#") or " " in prefix:
        raise UsageError(f"archive.root: {shown} must be s3://bucket/path, without blanks, query or fragment")
    if not prefix.strip("/"):
        return bucket, ""
    try:
        return bucket, str(safe_relpath(prefix)) + "/"
    except UsageError as exc:
        raise UsageError(f"archive.root: {shown}: {exc}") from None


class _S3Body(Body):
    def __init__(self, transport: "S3Transport", url: str, stream: Any, start: int, length: int | None,
                 total: int | None, first: bytes, ended: bool, lost: Exception | None) -> None:
        super().__init__(url, start, length, total, first, ended, lost)
        self._transport = transport
        self._stream = stream

    def _more(self, size: int) -> tuple[bytes, Exception | None]:
        chunk, lost = self._transport.on_loop(self.url, read_up_to, self._stream.read, size)
        return chunk, None if lost is None else network_failure(lost, self.url)

    def _release(self, ended: bool) -> None:
        self._transport.on_loop(self.url, _close, self._stream)


async def _close(stream: Any) -> None:
    stream.close()


class S3Transport(Transport):
    """An S3 bucket (and key prefix) holding the archive's tree, read through s3fs."""

    lists_trees = True

    def __init__(self, root: str, s3: S3Config, timeout_s: float, user_agent: str) -> None:
        self.bucket, self.prefix = split_s3_root(root)
        self.location = f"s3://{self.bucket}/{self.prefix}"
        endpoint = None
        if s3.endpoint_url is not None:
            try:
                endpoint = validate_base_url(s3.endpoint_url).rstrip("/")
            except UsageError as exc:
                raise UsageError(f"archive.s3.endpoint_url: {exc}") from None
        try:
            import aiohttp
            import s3fs
            from botocore.exceptions import BotoCoreError
            from fsspec.asyn import sync
        except ImportError as exc:
            raise missing_extra(self.location, exc) from None
        self._sync = sync
        self._anon = s3.anon
        self._network_errors = (OSError, asyncio.TimeoutError, BotoCoreError, aiohttp.ClientError)
        self._fs = s3fs.S3FileSystem(
            anon=s3.anon, endpoint_url=endpoint, client_kwargs={"region_name": s3.region},
            config_kwargs={"retries": {"total_max_attempts": 1}, "connect_timeout": timeout_s,
                           "read_timeout": timeout_s, "user_agent_extra": user_agent},
            skip_instance_cache=True, use_listings_cache=False,
        )
        self._fs.retries = 1  # the downloader retries, with its own rule for what is worth it

    def __repr__(self) -> str:
        return f"S3Transport({self.location!r})"

    def url_for(self, relpath: str | PurePosixPath, directory: bool = False) -> str:
        """`s3://bucket/prefix/<relpath>`: S3 keys are not percent-encoded."""
        return self.location + str(safe_relpath(relpath)) + ("/" if directory else "")

    # -- requests -----------------------------------------------------------------------

    def _call(self, url: str, method: str, **kwargs: Any) -> Any:
        """One S3 API call through s3fs, its failure translated (the module docstring of transport.py says how)."""
        try:
            return self._fs.call_s3(method, **kwargs)
        except self._network_errors as exc:
            raise self._translate(exc, url) from exc

    def on_loop(self, url: str, func: Any, *args: Any) -> Any:
        """Run a coroutine function (reading a body) on s3fs's loop; a lost connection is Transient."""
        try:
            return self._sync(self._fs.loop, func, *args)
        except self._network_errors as exc:
            raise network_failure(exc, url) from exc

    def _translate(self, exc: BaseException, url: str) -> Exception:
        response = getattr(exc.__cause__, "response", None) or getattr(exc, "response", None)
        if not isinstance(response, dict):
            return network_failure(exc, url)
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(response.get("Error", {}).get("Code") or status)
        what = f"S3 {code}" + (f", HTTP {status}" if str(status) != code else "")
        if status == 404 or code in ("NoSuchKey", "NoSuchBucket"):
            return NoDataError(f"not in the archive: {url} ({what})", url=url)
        if status == 416 or code == "InvalidRange":
            return Restart(f"{what}: the range cannot be served")
        if code in _RETRY_CODES or status in (408, 429) or status >= 500:
            return Transient(what)
        hint = ""
        if status == 403:
            hint = ("; the bucket refuses anonymous reads: give credentials with archive.s3.anon: false" if self._anon
                    else "; these credentials may not read it (HEASARC's bucket needs none: archive.s3.anon: true)")
        return DataError(f"cannot download {url}: {what}{hint}", url=url)

    async def _get_object(self, key: str, offset: int) -> tuple[dict[str, Any], bytes, bool, Exception | None]:
        """GetObject from `offset`: the answer, its first READ_SIZE bytes, whether that was all (closed), what cut it."""
        ranged = {"Range": f"bytes={offset}-"} if offset else {}
        answer: dict[str, Any] = await self._fs._call_s3("get_object", Bucket=self.bucket, Key=key, **ranged)
        stream = answer["Body"]
        try:
            first, lost = await read_up_to(stream.read, READ_SIZE)
        except BaseException:
            stream.close()
            raise
        ended = lost is None and len(first) < READ_SIZE
        if ended or lost is not None:
            stream.close()
        return answer, first, ended, lost

    def open(self, relpath: PurePosixPath, offset: int) -> Body:
        url = self.url_for(relpath)
        try:
            answer, first, ended, lost = self._sync(self._fs.loop, self._get_object, self.prefix + str(relpath), offset)
        except self._network_errors as exc:
            raise self._translate(exc, url) from exc
        length = answer.get("ContentLength")
        body = _S3Body(self, url, answer["Body"], 0, length, length, first, ended,
                       None if lost is None else network_failure(lost, url))
        if answer.get("ContentRange"):
            try:
                body.start, body.total = parse_content_range(answer["ContentRange"])
            except Transient:
                body.close()
                raise
        return body

    def _pages(self, url: str, prefix: str, delimiter: bool) -> Iterator[dict[str, Any]]:
        """Every page of a ListObjectsV2 listing (1,000 keys each), refusing one of more than MAX_LISTING_KEYS."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = "/"
        seen = 0
        while True:
            page = self._call(url, "list_objects_v2", **kwargs)
            seen += len(page.get("Contents", ())) + len(page.get("CommonPrefixes", ()))
            if seen > MAX_LISTING_KEYS:
                raise DataError(f"listing of {url} has more than {MAX_LISTING_KEYS} keys: not an ObsID directory", url=url)
            yield page
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                raise Transient(f"listing of {url} was cut short without a continuation token")
            kwargs["ContinuationToken"] = token

    def list_dir(self, relpath: PurePosixPath) -> tuple[list[str], list[str]]:
        url = self.url_for(relpath, directory=True)
        prefix = self.prefix + str(relpath) + "/"
        files: set[str] = set()
        subdirs: set[str] = set()
        for page in self._pages(url, prefix, delimiter=True):
            for item in page.get("Contents", ()):
                name = item["Key"][len(prefix):]
                if name and is_safe_name(name, url):  # the empty name is a 'directory marker' object
                    files.add(name)
            for item in page.get("CommonPrefixes", ()):
                name = item["Prefix"][len(prefix):].rstrip("/")
                if name and is_safe_name(name, url):
                    subdirs.add(name)
        if not files and not subdirs:
            raise NoDataError(f"not in the archive: {url} (no keys under it)", url=url)
        return sorted(files), sorted(subdirs - files)

    def list_tree(self, relpath: PurePosixPath) -> list[PurePosixPath]:
        url = self.url_for(relpath, directory=True)
        prefix = self.prefix + str(relpath) + "/"
        found: list[PurePosixPath] = []
        for page in self._pages(url, prefix, delimiter=False):
            for item in page.get("Contents", ()):
                rest = item["Key"][len(prefix):]
                if not rest or rest.endswith("/"):
                    continue  # directory markers
                if not all(is_safe_name(part, url) for part in rest.split("/")):
                    continue
                rel = PurePosixPath(rest)
                if len(rel.parts) > MAX_TREE_DEPTH:
                    raise DataError(f"{url}{rest[:80]!r} is more than {MAX_TREE_DEPTH} levels deep", url=url)
                found.append(rel)
        if not found:
            raise NoDataError(f"not in the archive: {url} (no keys under it)", url=url)
        return sorted(found)

    def is_empty(self) -> bool:
        try:
            page = self._call(self.location, "list_objects_v2", Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except NoDataError:  # no such bucket
            return True
        return not page.get("Contents") and not page.get("CommonPrefixes")
