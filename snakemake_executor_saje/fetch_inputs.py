"""Run on the node, not imported: fetch a task's input files listed in a manifest.

A job with many inputs does not fit a task's resourceFiles (Batch refuses a task over its size
limit with RequestBodyTooLarge), so SAJE lists them in a manifest blob instead, one
`url<TAB>path<TAB>mode` line per file (the URL carries a SAS for that blob alone), and the
task's command starts with `python3 saje-fetch-inputs.py saje-inputs.tsv`. With the pools'
managed identity (--saje-node-identity) a line ends with `<TAB>identity` (its ARM id) and its URL
has no SAS: the blob is read with a token for that identity from the node's identity endpoint
(IMDS; AZURE_POD_IDENTITY_AUTHORITY_HOST moves it, as for the Azure SDKs). Standard library only:
it runs under whatever Python the node has. Messages name paths, never URLs (they hold a SAS).
The manifest is deleted once every file is in place.

Usage: python3 saje-fetch-inputs.py MANIFEST
"""
import json
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ATTEMPTS = 6
PARALLEL = 8
STORAGE = "https://storage.azure.com/"
_tokens: dict = {}
_tokens_lock = threading.Lock()


def bearer(identity: str) -> dict:
    """The headers that read a blob with `identity`'s token from IMDS (one token per identity)."""
    with _tokens_lock:
        if identity not in _tokens:
            authority = os.environ.get("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://169.254.169.254").rstrip("/")
            query = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": STORAGE, "mi_res_id": identity})
            request = urllib.request.Request(f"{authority}/metadata/identity/oauth2/token?{query}",
                                             headers={"Metadata": "true"})
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # IMDS is never proxied
            with opener.open(request, timeout=30) as reply:
                _tokens[identity] = json.load(reply)["access_token"]
        return {"Authorization": f"Bearer {_tokens[identity]}", "x-ms-version": "2020-04-08"}


def fetch(line: str) -> None:
    url, path, mode, *identity = line.rstrip("\n").split("\t")
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    partial = f"{path}.saje-partial"
    for attempt in range(ATTEMPTS):
        try:
            request = urllib.request.Request(url, headers=bearer(identity[0]) if identity else {})
            with urllib.request.urlopen(request, timeout=300) as reply, open(partial, "wb") as out:
                shutil.copyfileobj(reply, out, 1 << 20)
            os.replace(partial, path)
            os.chmod(path, int(mode, 8) if mode else 0o770)  # Batch's default resource-file mode
            return
        except urllib.error.HTTPError as exc:
            if exc.code not in (408, 429, 500, 502, 503, 504) or attempt == ATTEMPTS - 1:
                raise SystemExit(f"saje-fetch-inputs: cannot fetch {path}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            if attempt == ATTEMPTS - 1:
                reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
                raise SystemExit(f"saje-fetch-inputs: cannot fetch {path}: {reason}") from None
        time.sleep(2 ** attempt)


def main(manifest: str) -> None:
    with open(manifest, encoding="utf-8") as listing:
        lines = [line for line in listing if line.strip()]
    with ThreadPoolExecutor(PARALLEL) as pool:
        for _ in pool.map(fetch, lines):
            pass
    os.remove(manifest)


if __name__ == "__main__":
    main(sys.argv[1])
